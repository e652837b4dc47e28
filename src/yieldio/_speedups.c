/* yieldio._speedups: the plain echo's per-message step, and the load client's, in C (optional; see
yieldio/servers/echo.py and yieldio/clients/load.py).

Why: at 1 KiB per message the echo server spends most of its user-space time
in the Python-level price of two socket calls per message (argument parsing
of each, a buffer view, a slice between them). This does the same two
system calls in one call from Python. The build compiles it whenever it
finds a C compiler (hatch_build.py; YIELDIO_NO_EXTENSIONS=1 skips it); the
pure-Python loop in echo.py is the reference, and this must behave exactly
like it.

echo_step(fd, buffer, head) -> int | None | tuple[int, int]
    Receives into buffer[head:] (the prefix sits in buffer[:head]), then
    sends buffer[:head + received].
    - received > 0, all of it sent: returns received.
    - end of input: returns 0.
    - nothing to read (EAGAIN): returns None.
    - received > 0 but the send took only part (EAGAIN: maybe none): returns
      (received, sent), and the caller keeps the rest and waits to write.
    - any other error raises OSError with its errno, as the socket methods do
      (ConnectionResetError, BrokenPipeError...). EINTR is retried after the
      signal handlers ran, as the socket methods do.

RequestChain(fd, trap, load, index)
    The load client's loop over one connection while its echoes come back
    exact (see yieldio/clients/load.py, whose _PureRequestChain is the same
    in Python and the reference). An iterator: each next() receives once
    into load.receive_buffer and
    - nothing to read (EAGAIN): returns trap, the task's wait to read;
    - the echo of request `number` is exactly prefix + message: notes the
      time (time.perf_counter()'s clock: both are CLOCK_MONOTONIC on
      Linux), adds one to `done`, appends the latency (whole microseconds
      since `began`) to load.tally.latencies while load.tally.measuring;
      then, unless `left` is 0 or load.remaining (the tickets, None for no
      limit) is 0, takes a ticket, sends request `number + stride` and
      returns trap again;
    - otherwise the iteration stops: after a read that was not the exact
      echo (short, long, wrong, b'' at end of input) with `reply` holding
      it; after an exact echo that was not followed;
      after a next request sent in part (EAGAIN: maybe none), with `sent`
      the bytes that went and the caller sending the rest.
    Message n is load.messages[n]: a slice of its random pool, read in
    place, when load.messages.slicing() gives one. Any other error raises
    OSError with its errno, as echo_step does; a send that fails gives its
    ticket and its number back. The caller sets number, began and left
    before each run, and done before the first; reply is None and sent -1
    unless a stop set them. Tickets are the Load's own: with no limit
    (load.remaining is None) none is needed, else load._take_ticket() and
    load._give_ticket() keep the count.
    Why: the client's requests/s are bounded by its per-request CPU, and a
    Python loop around each echo costs more than the two system calls'
    own share of it.

SOURCE_SHA256: the SHA-256 of this file as it was compiled (the build passes
it as a macro); yieldio.compiled does not load a module built from another
version of this file.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/types.h>

#ifndef YIELDIO_SOURCE_SHA256
#error "YIELDIO_SOURCE_SHA256 is not defined: build the module through yieldio's build (hatch_build.py defines it)"
#endif
#define STRINGIFY_(token) #token
#define STRINGIFY(token) STRINGIFY_(token)

static PyObject *
raise_errno(int error)
{
    errno = error;
    return PyErr_SetFromErrno(PyExc_OSError);
}

/* One recv (sending == 0) or send; after EINTR, the signal handlers run and it is tried again, as
   the socket methods do. Returns the byte count; -1 with *error set; -2 if a signal handler raised
   (the exception is set). The GIL stays held: the descriptors are non-blocking (yieldio's sockets
   all are), so the call never waits, and handing the GIL over and taking it back would cost more
   than the copy it lets another thread run beside. */
static ssize_t
transfer(int sending, int fd, char *data, size_t size, int *error)
{
    for (;;) {
        ssize_t done = sending ? send(fd, data, size, MSG_NOSIGNAL) : recv(fd, data, size, 0);
        *error = done < 0 ? errno : 0;
        if (done >= 0 || *error != EINTR) {
            return done;
        }
        if (PyErr_CheckSignals() < 0) {
            return -2;
        }
    }
}

/* A file descriptor from a Python int; -1 with an exception set if it is not one. */
static int
descriptor(PyObject *number)
{
    long fd = PyLong_AsLong(number);
    if (fd == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (fd < 0 || fd > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "not a file descriptor");
        return -1;
    }
    return (int)fd;
}

static PyObject *
echo_step(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "echo_step(fd, buffer, head) takes 3 arguments");
        return NULL;
    }
    int fd = descriptor(args[0]);
    if (fd < 0) {
        return NULL;
    }
    Py_ssize_t head = PyLong_AsSsize_t(args[2]);
    if (head == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_WRITABLE | PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (head < 0 || head >= view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "head must leave room in the buffer");
        return NULL;
    }
    char *base = view.buf;
    int error = 0;
    ssize_t received = transfer(0, fd, base + head, (size_t)(view.len - head), &error);
    if (received == -2) {
        PyBuffer_Release(&view);
        return NULL;
    }
    if (received <= 0) {
        PyBuffer_Release(&view);
        if (received == 0) {
            return PyLong_FromLong(0);
        }
        if (error == EAGAIN || error == EWOULDBLOCK) {
            Py_RETURN_NONE;
        }
        return raise_errno(error);
    }
    size_t reply = (size_t)(head + received);
    ssize_t sent = transfer(1, fd, base, reply, &error);
    if (sent == -2) {
        PyBuffer_Release(&view);
        return NULL;
    }
    PyBuffer_Release(&view);
    if (sent < 0) {
        if (error != EAGAIN && error != EWOULDBLOCK) {
            return raise_errno(error);
        }
        sent = 0;
    }
    if ((size_t)sent == reply) {
        return PyLong_FromSsize_t(received);
    }
    return Py_BuildValue("(nn)", (Py_ssize_t)received, (Py_ssize_t)sent);
}

/* time.perf_counter()'s clock, as a double in seconds */
static double
perf_counter(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

/* RequestChain (see the top): the state of one connection's requests, read and set from Python
   between runs, and what it borrows from the Load for the connection's life. */
typedef struct {
    PyObject_HEAD
    int fd;
    Py_buffer buffer;     /* load.receive_buffer, held */
    PyObject *trap;       /* yielded while waiting for an echo */
    PyObject *prefix;     /* bytes */
    PyObject *messages;   /* load.messages: messages[n] when there is no pool */
    PyObject *pool;       /* bytes, or NULL */
    Py_ssize_t size, step, span, stride;
    PyObject *load;       /* .remaining: the tickets */
    PyObject *tally;      /* .measuring */
    PyObject *append;     /* tally.latencies.append */
    Py_buffer inflight;   /* load.inflight, array('d'): per connection, when its request on the wire was sent */
    Py_ssize_t index;
    long long number, left, done;
    double began;
    PyObject *reply;      /* bytes, or None */
    Py_ssize_t sent;
} RequestChain;

static PyObject *str_remaining, *str_measuring, *str_take_ticket, *str_give_ticket;

/* Message n's bytes: a pointer into the pool, or into *holder (a new reference the caller drops). */
static const char *
message_of(RequestChain *self, long long n, PyObject **holder)
{
    *holder = NULL;
    if (self->pool != NULL) {
        return PyBytes_AS_STRING(self->pool) + (Py_ssize_t)((n * self->step) % self->span);
    }
    PyObject *number = PyLong_FromLongLong(n);
    if (number == NULL) {
        return NULL;
    }
    PyObject *message = PyObject_GetItem(self->messages, number);
    Py_DECREF(number);
    if (message == NULL) {
        return NULL;
    }
    if (!PyBytes_Check(message) || PyBytes_GET_SIZE(message) != self->size) {
        Py_DECREF(message);
        PyErr_SetString(PyExc_TypeError, "a message must be bytes of the plan's size");
        return NULL;
    }
    *holder = message;
    return PyBytes_AS_STRING(message);
}

/* Take a ticket: 1 taken (or no limit), 0 none left, -1 error. The common case, no limit, costs one
   attribute read; with -n the Load counts (Load._take_ticket). */
static int
take_ticket(PyObject *load)
{
    PyObject *remaining = PyObject_GetAttr(load, str_remaining);
    if (remaining == NULL) {
        return -1;
    }
    int unlimited = remaining == Py_None;
    Py_DECREF(remaining);
    if (unlimited) {
        return 1;
    }
    PyObject *taken = PyObject_CallMethodNoArgs(load, str_take_ticket);
    if (taken == NULL) {
        return -1;
    }
    int yes = PyObject_IsTrue(taken);
    Py_DECREF(taken);
    return yes;
}

/* Give a ticket back (a request that did not go out after all: Load._give_ticket); keeps the error
   already set. */
static void
give_ticket(PyObject *load)
{
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyObject *given = PyObject_CallMethodNoArgs(load, str_give_ticket);
    Py_XDECREF(given);
    PyErr_Clear();
    PyErr_Restore(type, value, traceback);
}

static int
note_latency(RequestChain *self, double now)
{
    PyObject *measuring = PyObject_GetAttr(self->tally, str_measuring);
    if (measuring == NULL) {
        return -1;
    }
    int yes = measuring == Py_True;
    Py_DECREF(measuring);
    if (!yes) {
        return 0;
    }
    PyObject *latency = PyLong_FromLongLong((long long)((now - self->began) * 1e6));
    if (latency == NULL) {
        return -1;
    }
    PyObject *done = PyObject_CallOneArg(self->append, latency);
    Py_DECREF(latency);
    if (done == NULL) {
        return -1;
    }
    Py_DECREF(done);
    return 0;
}

static PyObject *
chain_next(RequestChain *self)
{
    Py_ssize_t prefix_size = PyBytes_GET_SIZE(self->prefix), size = self->size;
    char *base = self->buffer.buf;
    int error = 0;
    ssize_t received = transfer(0, self->fd, base, (size_t)self->buffer.len, &error);
    if (received == -2) {
        return NULL;
    }
    if (received < 0) {
        if (error == EAGAIN || error == EWOULDBLOCK) {
            return Py_NewRef(self->trap);
        }
        return raise_errno(error);
    }
    PyObject *holder;
    const char *message = message_of(self, self->number, &holder);
    if (message == NULL) {
        return NULL;
    }
    int exact = received == prefix_size + size && memcmp(base, PyBytes_AS_STRING(self->prefix), (size_t)prefix_size) == 0
                && memcmp(base + prefix_size, message, (size_t)size) == 0;
    Py_XDECREF(holder);
    if (!exact) {
        PyObject *reply = PyBytes_FromStringAndSize(base, received);
        if (reply == NULL) {
            return NULL;
        }
        Py_SETREF(self->reply, reply);
        return NULL; /* stop */
    }
    double now = perf_counter();
    self->done += 1;
    if (note_latency(self, now) < 0) {
        return NULL;
    }
    if (self->left == 0) {
        return NULL; /* stop */
    }
    int ticket = take_ticket(self->load);
    if (ticket <= 0) {
        return NULL; /* stop; with an error set if it failed */
    }
    self->number += self->stride;
    message = message_of(self, self->number, &holder);
    ssize_t sent = message == NULL ? -2 : transfer(1, self->fd, (char *)message, (size_t)size, &error);
    Py_XDECREF(holder);
    if (sent < 0 && (sent == -2 || (error != EAGAIN && error != EWOULDBLOCK))) {
        if (sent != -2) {
            raise_errno(error);
        }
        self->number -= self->stride;
        give_ticket(self->load);
        return NULL;
    }
    self->began = now;
    if (self->left > 0) {
        self->left -= 1;
    }
    ((double *)self->inflight.buf)[self->index] = now;
    if (sent < size) {
        self->sent = sent < 0 ? 0 : sent;
        return NULL; /* stop: the caller sends the rest */
    }
    return Py_NewRef(self->trap);
}

static PyObject *
chain_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *fd_object, *trap, *load;
    Py_ssize_t index;
    if (!PyArg_ParseTuple(args, "OOOn:RequestChain", &fd_object, &trap, &load, &index) || (kwargs && PyDict_Size(kwargs))) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "RequestChain(fd, trap, load, index) takes no keywords");
        }
        return NULL;
    }
    int fd = descriptor(fd_object);
    if (fd < 0) {
        return NULL;
    }
    RequestChain *self = (RequestChain *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->fd = fd;
    self->index = index;
    self->sent = -1;
    self->reply = Py_NewRef(Py_None);
    self->trap = Py_NewRef(trap);
    self->load = Py_NewRef(load);
    PyObject *buffer = NULL, *plan = NULL, *size = NULL, *stride = NULL, *slicing = NULL, *latencies = NULL, *inflight = NULL;
    int ok = 0;
    if ((buffer = PyObject_GetAttrString(load, "receive_buffer")) == NULL
        || PyObject_GetBuffer(buffer, &self->buffer, PyBUF_WRITABLE | PyBUF_SIMPLE) < 0) {
        goto done;
    }
    if ((plan = PyObject_GetAttrString(load, "plan")) == NULL
        || (self->prefix = PyObject_GetAttrString(plan, "prefix")) == NULL
        || (size = PyObject_GetAttrString(plan, "size")) == NULL
        || (stride = PyObject_GetAttrString(plan, "connections")) == NULL
        || (self->messages = PyObject_GetAttrString(load, "messages")) == NULL
        || (slicing = PyObject_CallMethod(self->messages, "slicing", NULL)) == NULL
        || (self->tally = PyObject_GetAttrString(load, "tally")) == NULL
        || (latencies = PyObject_GetAttrString(self->tally, "latencies")) == NULL
        || (self->append = PyObject_GetAttrString(latencies, "append")) == NULL
        || (inflight = PyObject_GetAttrString(load, "inflight")) == NULL
        || PyObject_GetBuffer(inflight, &self->inflight, PyBUF_WRITABLE | PyBUF_FORMAT) < 0) {
        goto done;
    }
    if (!PyBytes_Check(self->prefix) || self->inflight.format == NULL || strcmp(self->inflight.format, "d") != 0
        || index < 0 || index >= self->inflight.len / (Py_ssize_t)sizeof(double) || !PyTuple_Check(slicing)
        || PyTuple_GET_SIZE(slicing) != 3) {
        PyErr_SetString(PyExc_TypeError, "RequestChain: load is not a yieldio Load, or index not one of its connections");
        goto done;
    }
    self->size = PyLong_AsSsize_t(size);
    self->stride = PyLong_AsSsize_t(stride);
    self->step = PyLong_AsSsize_t(PyTuple_GET_ITEM(slicing, 1));
    self->span = PyLong_AsSsize_t(PyTuple_GET_ITEM(slicing, 2));
    if (PyErr_Occurred()) {
        goto done;
    }
    PyObject *pool = PyTuple_GET_ITEM(slicing, 0);
    if (pool != Py_None) {
        if (!PyBytes_Check(pool) || self->span <= 0 || PyBytes_GET_SIZE(pool) < self->span - 1 + self->size) {
            PyErr_SetString(PyExc_ValueError, "RequestChain: the message pool is too short for its span");
            goto done;
        }
        self->pool = Py_NewRef(pool);
    }
    if (self->buffer.len <= PyBytes_GET_SIZE(self->prefix) + self->size) { /* a byte more than the echo: to see a long one */
        PyErr_SetString(PyExc_ValueError, "RequestChain: the receive buffer must be longer than an echo");
        goto done;
    }
    ok = 1;
done:
    Py_XDECREF(buffer);
    Py_XDECREF(plan);
    Py_XDECREF(size);
    Py_XDECREF(stride);
    Py_XDECREF(slicing);
    Py_XDECREF(latencies);
    Py_XDECREF(inflight);
    if (!ok) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void
chain_dealloc(RequestChain *self)
{
    if (self->buffer.obj != NULL) {
        PyBuffer_Release(&self->buffer);
    }
    if (self->inflight.obj != NULL) {
        PyBuffer_Release(&self->inflight);
    }
    Py_XDECREF(self->trap);
    Py_XDECREF(self->prefix);
    Py_XDECREF(self->messages);
    Py_XDECREF(self->pool);
    Py_XDECREF(self->load);
    Py_XDECREF(self->tally);
    Py_XDECREF(self->append);
    Py_XDECREF(self->reply);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
chain_get_reply(RequestChain *self, void *closure)
{
    (void)closure;
    return Py_NewRef(self->reply);
}

static int
chain_set_reply(RequestChain *self, PyObject *value, void *closure)
{
    (void)closure;
    if (value == NULL || (value != Py_None && !PyBytes_Check(value))) {
        PyErr_SetString(PyExc_TypeError, "reply is bytes or None");
        return -1;
    }
    Py_SETREF(self->reply, Py_NewRef(value));
    return 0;
}

static PyMemberDef chain_members[] = {
    {"number", T_LONGLONG, offsetof(RequestChain, number), 0, "the number of the request on the wire"},
    {"began", T_DOUBLE, offsetof(RequestChain, began), 0, "when its latency began (perf_counter seconds)"},
    {"left", T_LONGLONG, offsetof(RequestChain, left), 0, "requests it may still send itself (-1: no limit)"},
    {"done", T_LONGLONG, offsetof(RequestChain, done), 0, "exact echoes it has read"},
    {"sent", T_PYSSIZET, offsetof(RequestChain, sent), 0, "a next request sent in part: how much went (-1: none)"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef chain_getset[] = {
    {"reply", (getter)chain_get_reply, (setter)chain_set_reply, "a read that was not the exact echo, or None", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RequestChainType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "yieldio._speedups.RequestChain",
    .tp_basicsize = sizeof(RequestChain),
    .tp_dealloc = (destructor)chain_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "RequestChain(fd, trap, load, index): one connection's requests while the echoes are exact; see the module.",
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)chain_next,
    .tp_members = chain_members,
    .tp_getset = chain_getset,
    .tp_new = chain_new,
};

static PyMethodDef speedups_methods[] = {
    {"echo_step", (PyCFunction)(void (*)(void))echo_step, METH_FASTCALL,
     "echo_step(fd, buffer, head): receive into buffer[head:], send buffer[:head + n]; see the module."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT, "yieldio._speedups", "The plain echo's per-message step, and the load client's, in C.", -1, speedups_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *module = PyModule_Create(&speedups_module);
    if (module == NULL) {
        return NULL;
    }
    str_remaining = PyUnicode_InternFromString("remaining");
    str_measuring = PyUnicode_InternFromString("measuring");
    str_take_ticket = PyUnicode_InternFromString("_take_ticket");
    str_give_ticket = PyUnicode_InternFromString("_give_ticket");
    if (str_remaining == NULL || str_measuring == NULL || str_take_ticket == NULL || str_give_ticket == NULL || PyType_Ready(&RequestChainType) < 0
        || PyModule_AddObjectRef(module, "RequestChain", (PyObject *)&RequestChainType) < 0
        || PyModule_AddStringConstant(module, "SOURCE_SHA256", STRINGIFY(YIELDIO_SOURCE_SHA256)) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
