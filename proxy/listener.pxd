# C types for proxy/listener.py when it is compiled (setup.py); the .py stays the pure-Python twin.
# Attributes the request path and the tests read are public; the rest are C fields of the objects.

cdef dict _NAMED
cdef dict _METHODS
cdef dict _NAMES_SEEN
cdef long long _date_second
cdef tuple _date_ends

cdef class Listener
cdef class ClientConnection


cdef class Request:
    cdef public str method
    cdef public str target
    cdef public str version
    cdef public list headers
    cdef public object client
    cdef public str scheme
    cdef public object certificate
    cdef public object authorization
    cdef public object content_type
    cdef public object content_encoding
    cdef public object content_length
    cdef public object forwarded_for
    cdef public object opaque_id
    cdef public bytes passed_fields
    cdef public bint expect_continue
    cdef public bint keep_alive
    cdef public bint complete
    cdef public Py_ssize_t body_size
    cdef public bint too_large
    cdef public object refusal
    cdef public bint responded
    cdef list _chunks
    cdef ClientConnection _conn
    cdef object _waiter
    cdef bint _streaming
    cdef bint _chunked

    cpdef _wake(self)
    cpdef respond(self, int status, bytes fields, bytes body=*, length=*)
    cpdef begin(self, int status, bytes fields, length, source=*)
    cpdef send(self, chunk)
    cpdef end(self)
    cpdef abort(self)


cdef class Listener:
    cdef public object app
    cdef public object limits
    cdef public object metrics
    cdef public frozenset forwarded
    cdef public dict per_client
    cdef public set connections
    cdef public Py_ssize_t refused_connections
    cdef public Py_ssize_t header_timeouts
    cdef public Py_ssize_t write_timeouts
    cdef public bint draining


cdef class ClientConnection:
    cdef public Listener listener
    cdef public object loop
    cdef public object transport
    cdef object parser
    cdef public object client
    cdef public str scheme
    cdef public object certificate
    cdef public object limits
    cdef public bint writing_paused
    cdef public object stream_source
    cdef Request _parsing
    cdef bint _in_head
    cdef bytes _url
    cdef list _headers
    cdef Py_ssize_t _max_headers
    cdef list _trailers
    cdef Py_ssize_t _head_bytes
    cdef object _queue
    cdef Request _current
    cdef object _task
    cdef object _parked
    cdef Request _handoff
    cdef object _refusal
    cdef bint _closing
    cdef bint _stopped
    cdef bint _counted
    cdef readonly bint _reading_paused
    cdef bint _idle
    cdef bint _head_started
    cdef object _drainer
    cdef object _timer
    cdef double _timer_at
    cdef object _deadline
    cdef int _timer_job
    cdef object _write_timer
    cdef double _header_timeout
    cdef double _keepalive_timeout

    cpdef _serve_next(self)
    cpdef response_done(self, Request request)
    cpdef bytes head_end(self, Request request, bint close_delimited)
    cpdef _refuse(self, refusal)
    cpdef _answer_refusal(self, Request request)
    cpdef _arm(self, int job, double seconds)
    cpdef _schedule(self, double now, double deadline)
    cpdef _disarm(self)
    cpdef arm_body_timer(self, double seconds)
    cpdef disarm_body_timer(self)
    cpdef _head_timeout(self)
    cpdef write(self, data)
    cpdef writelines(self, parts)
    cpdef _start_write_timer(self)
    cpdef _stop_write_timer(self)
    cpdef _close(self)
    cpdef close_if_idle(self)
    cpdef abort(self)
