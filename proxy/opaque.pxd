# C types for proxy/opaque.py when it is compiled (setup.py); the .py stays the pure-Python twin.

cdef bytes _PREFIX
cdef object _COUNTER
cdef dict _FIELD_STARTS

cpdef bytes new_request_id()
cpdef bytes forwarded_field(str tenant, bytes request_id)
cpdef bytes echoed_field(client_id)
