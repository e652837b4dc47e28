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

request_step(fd, buffer, prefix, message, following) -> float | tuple[float, int] | bytes | None
    The load client's step (see yieldio/clients/load.py): receives once into
    buffer; when that is exactly prefix + message, notes the time and then
    sends following (unless it is None), the connection's next request.
    Why: the client's requests/s are bounded by its per-request CPU, and
    in Python most of what is not the two system calls is their price
    (argument parsing, a fresh 64 KiB bytes per read, an expected-echo
    concatenation, a comparison, a clock call).
    - the echo matched, following sent whole (or None): returns the time
      it matched, in time.perf_counter()'s seconds (both are
      CLOCK_MONOTONIC on Linux);
    - the echo matched, following sent in part (EAGAIN: maybe none):
      returns (time, sent), and the caller sends the rest;
    - nothing to read (EAGAIN): returns None;
    - anything else read (a short, long or wrong echo; b'' at end of
      input): returns it as bytes, following not sent, for the caller's
      byte-by-byte check;
    - any other error raises OSError with its errno, as echo_step does.

SOURCE_SHA256: the SHA-256 of this file as it was compiled (the build passes
it as a macro); yieldio.compiled does not load a module built from another
version of this file.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>

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

/* One recv (sending == 0) or send, with the GIL released; after EINTR, the signal handlers run
   and it is tried again, as the socket methods do. Returns the byte count; -1 with *error set;
   -2 if a signal handler raised (the exception is set). */
static ssize_t
transfer(int sending, int fd, char *data, size_t size, int *error)
{
    for (;;) {
        ssize_t done;
        Py_BEGIN_ALLOW_THREADS
        done = sending ? send(fd, data, size, MSG_NOSIGNAL) : recv(fd, data, size, 0);
        *error = done < 0 ? errno : 0;
        Py_END_ALLOW_THREADS
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

static PyObject *
request_step(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "request_step(fd, buffer, prefix, message, following) takes 5 arguments");
        return NULL;
    }
    int fd = descriptor(args[0]);
    if (fd < 0) {
        return NULL;
    }
    if (!PyBytes_Check(args[2]) || !PyBytes_Check(args[3]) || (args[4] != Py_None && !PyBytes_Check(args[4]))) {
        PyErr_SetString(PyExc_TypeError, "prefix and message must be bytes, following bytes or None");
        return NULL;
    }
    Py_ssize_t prefix_size = PyBytes_GET_SIZE(args[2]);
    Py_ssize_t message_size = PyBytes_GET_SIZE(args[3]);
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_WRITABLE | PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (view.len <= prefix_size + message_size) {  /* room for one byte more than the echo, to see a long one */
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "the buffer must be longer than the echo");
        return NULL;
    }
    char *base = view.buf;
    int error = 0;
    ssize_t received = transfer(0, fd, base, (size_t)view.len, &error);
    if (received == -2) {
        PyBuffer_Release(&view);
        return NULL;
    }
    if (received < 0) {
        PyBuffer_Release(&view);
        if (error == EAGAIN || error == EWOULDBLOCK) {
            Py_RETURN_NONE;
        }
        return raise_errno(error);
    }
    if (received != prefix_size + message_size
        || memcmp(base, PyBytes_AS_STRING(args[2]), (size_t)prefix_size) != 0
        || memcmp(base + prefix_size, PyBytes_AS_STRING(args[3]), (size_t)message_size) != 0) {
        PyObject *read = PyBytes_FromStringAndSize(base, received);
        PyBuffer_Release(&view);
        return read;
    }
    PyBuffer_Release(&view);
    double matched = perf_counter();
    if (args[4] == Py_None) {
        return PyFloat_FromDouble(matched);
    }
    Py_ssize_t following_size = PyBytes_GET_SIZE(args[4]);
    ssize_t sent = transfer(1, fd, PyBytes_AS_STRING(args[4]), (size_t)following_size, &error);
    if (sent == -2) {
        return NULL;
    }
    if (sent < 0) {
        if (error != EAGAIN && error != EWOULDBLOCK) {
            return raise_errno(error);
        }
        sent = 0;
    }
    if (sent == following_size) {
        return PyFloat_FromDouble(matched);
    }
    return Py_BuildValue("(dn)", matched, (Py_ssize_t)sent);
}

static PyMethodDef speedups_methods[] = {
    {"echo_step", (PyCFunction)(void (*)(void))echo_step, METH_FASTCALL,
     "echo_step(fd, buffer, head): receive into buffer[head:], send buffer[:head + n]; see the module."},
    {"request_step", (PyCFunction)(void (*)(void))request_step, METH_FASTCALL,
     "request_step(fd, buffer, prefix, message, following): check one echo, send the next; see the module."},
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
    if (PyModule_AddStringConstant(module, "SOURCE_SHA256", STRINGIFY(YIELDIO_SOURCE_SHA256)) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
