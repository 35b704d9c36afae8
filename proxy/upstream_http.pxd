# C types for proxy/upstream_http.py when it is compiled (setup.py); the .py stays the pure-Python twin.
# Attributes other code reads are public; the rest are C fields of the objects.

cdef frozenset _NOT_RELAYED
cdef dict _HEADER_LINES
cdef tuple _header_line(bytes line)

cdef class ConnectionPool
cdef class NodeConnection


cdef class UpstreamResponse:
    cdef public object status
    cdef public object raw_headers
    cdef public object relayed
    cdef public object content_length
    cdef public bint keep_alive
    cdef public bint complete
    cdef public object read_timeout
    cdef public object content_encoding
    cdef NodeConnection _conn
    cdef object _chunks
    cdef Py_ssize_t _buffered
    cdef object _waiter
    cdef object _error
    cdef bint _released
    cdef bint _held
    cdef public Py_ssize_t high_water

    cpdef _feed(self, data)
    cpdef _finish(self)
    cpdef _fail(self, exc)
    cpdef _wake(self)
    cpdef read_now(self)
    cpdef pause(self)
    cpdef resume(self)
    cpdef release(self)


cdef class NodeConnection:
    cdef public ConnectionPool pool
    cdef public object loop
    cdef public object transport
    cdef public bint closed
    cdef public Py_ssize_t uses
    cdef bytearray _buf
    cdef object _head_waiter
    cdef object _head_timer
    cdef object _head_deadline
    cdef UpstreamResponse _response
    cdef bint _head_request
    cdef bint _received_any
    cdef object _remaining
    cdef bint _chunked
    cdef Py_ssize_t _chunk_left
    cdef int _chunk_state
    cdef readonly bint _paused
    cdef object _peek
    cdef public double hedge_at

    cpdef _parse_head(self, bytes head)
    cpdef _body(self, data)
    cpdef _dechunk(self, data)
    cpdef _protocol_error(self, what)
    cpdef pause(self)
    cpdef resume(self)
    cpdef idle(self)
    cpdef _stop_head_timer(self)
    cpdef bint _closed_by_node(self)
    cpdef close(self)
    cpdef send(self, head, body, bint is_head, timeout, double hedge_after=*, bint peek=*)


cdef class ConnectionPool:
    cdef public object host
    cdef public object port
    cdef public object label
    cdef public object owner
    cdef public Py_ssize_t max_idle
    cdef public object loop
    cdef public object ssl
    cdef public object server_hostname
    cdef object _idle
    cdef public Py_ssize_t open
    cdef public set conns

    cpdef NodeConnection take_idle(self)
    cpdef put_back(self, NodeConnection conn)
    cpdef forget(self, NodeConnection conn)
