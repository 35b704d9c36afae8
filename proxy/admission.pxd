# C types for proxy/admission.py when it is compiled (setup.py); the .py stays the pure-Python twin.
# Every attribute stays visible from Python (reports, gauges and tests read them).

from proxy.gate cimport Gate

cdef class TenantSlots
cdef class Ticket


cdef class TenantSlots:
    cdef public object name
    cdef public Py_ssize_t max_concurrent
    cdef public Py_ssize_t max_queue
    cdef public double max_wait_s
    cdef public double weight
    cdef public Py_ssize_t inflight
    cdef public double inflight_cost
    cdef public double queued_cost
    cdef public Py_ssize_t reserve_inflight
    cdef public double reserve_cost
    cdef public Py_ssize_t reserve_epoch
    cdef public object waiters
    cdef public double finish
    cdef public bint active
    cdef public double present_until
    cdef public double idle_since
    cdef public double idle_gap
    cdef public double busy_since
    cdef public Py_ssize_t admitted
    cdef public Py_ssize_t throttled
    cdef public Py_ssize_t would_throttle
    cdef public Py_ssize_t abandoned
    cdef public double shed_until
    cdef public Py_ssize_t shed
    cdef public double refused_at


cdef class Ticket:
    cdef public object tenant
    cdef public double cost
    cdef public double waited
    cdef public bint held
    cdef public TenantSlots slots
    cdef public double counted
    cdef public bint reserve
    cdef public Py_ssize_t epoch
    cdef public double admitted_at
    cdef public double overdue
    cdef public bint probe


cdef class Waiter:
    cdef public TenantSlots slots
    cdef public double cost
    cdef public double since
    cdef public Py_ssize_t seq
    cdef public Ticket ticket
    cdef public object on_grant
    cdef public object on_refuse
    cdef public bint known
    cdef public bint burst


cdef class Admission:
    cdef public object clock
    cdef public dict tenants
    cdef public Gate gate
    cdef public double vtime
    cdef readonly dict _backlog
    cdef readonly dict _reserve_holders
    cdef readonly dict _held
    cdef readonly double _overdue
    cdef double _overdue_at
    cdef readonly double _active_weight
    cdef readonly Py_ssize_t _active_count
    cdef Py_ssize_t _seq
    cdef readonly list _quiet
    cdef readonly object _presence
    cdef readonly Py_ssize_t _probes

    cpdef try_enter(self, tenant, double cost, bint shadow=*, bint known=*)
    cpdef request(self, tenant, double cost, double now, bint shadow=*, bint known=*)
    cpdef withdraw(self, Waiter waiter, double now)
    cpdef leave(self, Ticket ticket, int status=*, double upstream_s=*, observed=*, now=*)
    cpdef refresh_overdue(self, double now)
    cpdef pump(self, double now)
    cpdef bint _fits(self, double cost, bint kept, double now, capacity=*, limit=*, bint known=*, bint burst=*)
    cpdef bint _fits_reserve(self, double cost, double now, capacity=*, limit=*)
    cpdef bint _probe_free(self)
    cpdef bint _in_burst(self, TenantSlots slots, double now)
    cpdef bint _may_borrow(self, TenantSlots slots, double now)
    cpdef bint _under_share(self, TenantSlots slots, double now, extra=*, capacity=*, limit=*)
    cpdef Ticket _admit(self, TenantSlots slots, double cost, double now, double waited, bint reserve, capacity=*,
                        bint known=*)
    cpdef _activate(self, TenantSlots slots)
    cpdef _deactivate(self, TenantSlots slots, double now)
    cpdef expire_presence(self, double now)
    cpdef _seen_quiet(self, TenantSlots slots, double now)
    cpdef _quiet_other(self, TenantSlots slots, double now)
