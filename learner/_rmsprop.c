/* RMSProp in TensorFlow's form as one pass over memory: the learner's optimizer step (learner/optimizers.py).
 *
 * torch needs five element-wise operations for it (mean square times alpha, plus (1 - alpha) g^2, plus eps,
 * reciprocal square root, the weight update), each reading and writing whole buffers of the network's size;
 * here each weight is read and written once. The same formula in float32: results agree with torch's to
 * float32 rounding (tests/test_optimizers.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

static void rmsprop_step(float *restrict weights, float *restrict mean_squares, const float *restrict gradients,
                         Py_ssize_t count, float lr, float alpha, float eps) {
    const float keep = 1.0f - alpha;
    for (Py_ssize_t i = 0; i < count; i++) {
        const float g = gradients[i];
        const float mean_square = alpha * mean_squares[i] + keep * g * g;
        mean_squares[i] = mean_square;
        weights[i] -= lr * g / sqrtf(mean_square + eps);
    }
}

static PyObject *step(PyObject *self, PyObject *args) {
    Py_buffer weights, mean_squares, gradients;
    float lr, alpha, eps;
    if (!PyArg_ParseTuple(args, "w*w*y*fff", &weights, &mean_squares, &gradients, &lr, &alpha, &eps)) {
        return NULL;
    }
    PyObject *result = Py_None;
    if (weights.len != mean_squares.len || weights.len != gradients.len || weights.len % sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "weights, mean squares and gradients must be float32 of one size");
        result = NULL;
    } else {
        Py_BEGIN_ALLOW_THREADS
        rmsprop_step(weights.buf, mean_squares.buf, gradients.buf, weights.len / (Py_ssize_t)sizeof(float), lr,
                     alpha, eps);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&weights);
    PyBuffer_Release(&mean_squares);
    PyBuffer_Release(&gradients);
    Py_XINCREF(result);
    return result;
}

static PyMethodDef methods[] = {
    {"step", step, METH_VARARGS,
     "step(weights, mean_squares, gradients, lr, alpha, eps): one RMSProp step in TensorFlow's form, in place, "
     "over float32 buffers of one size"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rmsprop", NULL, -1, methods};

PyMODINIT_FUNC PyInit__rmsprop(void) { return PyModule_Create(&module); }
