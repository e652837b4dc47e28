/* yieldio._speedups: the plain echo's per-message step in C (optional; see yieldio/servers/echo.py).

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

SOURCE_SHA256: the SHA-256 of this file as it was compiled (the build passes
it as a macro); yieldio.compiled does not load a module built from another
version of this file.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
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

static PyObject *
echo_step(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "echo_step(fd, buffer, head) takes 3 arguments");
        return NULL;
    }
    long fd = PyLong_AsLong(args[0]);
    if (fd == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (fd < 0 || fd > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "not a file descriptor");
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
    ssize_t received = transfer(0, (int)fd, base + head, (size_t)(view.len - head), &error);
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
    ssize_t sent = transfer(1, (int)fd, base, reply, &error);
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

static PyMethodDef speedups_methods[] = {
    {"echo_step", (PyCFunction)(void (*)(void))echo_step, METH_FASTCALL,
     "echo_step(fd, buffer, head): receive into buffer[head:], send buffer[:head + n]; see the module."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT, "yieldio._speedups", "The plain echo's per-message step in C.", -1, speedups_methods,
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
