# C types for proxy/esapi.py when it is compiled (setup.py); the .py stays the pure-Python twin.

cpdef parse_call(str method, str raw_path)
