# C types for proxy/gate.py when it is compiled (setup.py); the .py stays the pure-Python twin.
# Every attribute stays visible from Python (reports, gauges and tests read them).

cdef class Gate:
    cdef public bint enabled
    cdef public double headroom
    cdef public double base_headroom
    cdef public double contended_headroom
    cdef public object contended_until
    cdef public double min_limit
    cdef public double max_limit
    cdef public Py_ssize_t max_queue
    cdef public double poll_s
    cdef public object target_ms
    cdef public double share
    cdef public object algorithm
    cdef public double adaptive
    cdef public Py_ssize_t inflight
    cdef public double inflight_cost
    cdef public Py_ssize_t reserve_inflight
    cdef public double reserve_cost
    cdef public double overdue_cost
    cdef public Py_ssize_t queued
    cdef public Py_ssize_t data_nodes
    cdef public Py_ssize_t data_nodes_max
    cdef public Py_ssize_t threads
    cdef public Py_ssize_t threads_max
    cdef public double fan_out
    cdef public double _fan_out_at
    cdef public double _lat_cost
    cdef public double _cost
    cdef public double _count
    cdef public double _observed
    cdef public double _lat_obs
    cdef public double _faded_at
    cdef public object baseline
    cdef public Py_ssize_t _baseline_peak
    cdef public Py_ssize_t _w_n
    cdef public double _w_lat
    cdef public double _w_cost
    cdef public Py_ssize_t _w_peak
    cdef public object _w_start
    cdef public bint _w_backed_off
    cdef public object _pressure
    cdef public double _pressure_at
    cdef public Py_ssize_t backoffs
    cdef public double pool
    cdef public Py_ssize_t cores
    cdef public Py_ssize_t peer_inflight
    cdef public double peer_cost
    cdef public Py_ssize_t peer_reserve_inflight
    cdef public double peer_reserve_cost

    cpdef double _horizon_ms(self)
    cpdef double _mean_cost(self)
    cpdef double _threads_per_request(self)
    cpdef double _node_ratio(self)
    cpdef double _ceiling(self)
    cpdef double _live_ceiling(self)
    cpdef double _limit(self)
    cpdef object _capacity_cost(self)
    cpdef bint contend(self, double until)
    cpdef uncontend(self, double now)
    cpdef counted(self, double cost, capacity=*)
    cpdef bint fits(self, double cost, bint reserve, capacity=*, limit=*, bint known=*, bint burst=*)
    cpdef bint core_bound_holds(self, double cost, bint known, bint burst)
    cpdef take(self, double counted, bint reserve)
    cpdef give_back(self, double counted, bint reserve)
    cpdef leave_reserve(self, Py_ssize_t requests, double counted)
    cpdef set_peers(self, double pool, Py_ssize_t inflight, double cost, Py_ssize_t reserve_inflight, double reserve_cost)
    cpdef observe(self, double now, double cost, int status, double upstream_s, observed)
