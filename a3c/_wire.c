/* Float tensors to and from 16-bit wire floats in one pass over memory (a3c/codec.py, FlatField).
 *
 * The learner's per-push work in Python and torch took several passes: each tensor's bytes converted to float32
 * in its own small operation, the norm read all of them again; the reply's parameters converted to 16 bits,
 * copied into a bytes object per tensor and joined. Here a push's gradient is converted and its sum of squares
 * taken in the same pass, and the reply's parameters are written straight into the one bytes object that is
 * sent. Conversions round to nearest even, like torch's: the results are the same bytes (tests/test_codec.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { FLOAT16 = 0, BFLOAT16 = 1, FLOAT32 = 2 };

/* A tensor's bytes sit wherever the protobuf headers before them end, often at an odd address. */
typedef _Float16 __attribute__((aligned(1))) loose_float16;
typedef uint16_t __attribute__((aligned(1))) loose_uint16;
typedef float __attribute__((aligned(1))) loose_float;

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_F16C_PATH 1
/* Nearly all x86 CPUs since 2013 convert 8 floats at a time (F16C); GCC 12 does not vectorize the plain loop into
 * those instructions, so they are written out, and used where the CPU has them (checked when the module loads). */
static int cpu_has_f16c = 0;

__attribute__((target("avx,f16c")))
static Py_ssize_t encode_float16_f16c(const float *values, char *out, Py_ssize_t count) {
    Py_ssize_t i = 0;
    for (; i + 8 <= count; i += 8) {
        __m128i half = _mm256_cvtps_ph(_mm256_loadu_ps(values + i), _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128((__m128i *)(out + 2 * i), half);
    }
    return i;
}

__attribute__((target("avx,f16c")))
static Py_ssize_t decode_float16_f16c(const char *data, float *out, Py_ssize_t count, double *sum) {
    __m256 first = _mm256_setzero_ps(), second = _mm256_setzero_ps();
    Py_ssize_t i = 0;
    for (; i + 16 <= count; i += 16) {
        __m256 a = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(data + 2 * i)));
        __m256 b = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(data + 2 * i + 16)));
        _mm256_storeu_ps(out + i, a);
        _mm256_storeu_ps(out + i + 8, b);
        first = _mm256_add_ps(first, _mm256_mul_ps(a, a));
        second = _mm256_add_ps(second, _mm256_mul_ps(b, b));
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, _mm256_add_ps(first, second));
    for (int j = 0; j < 8; j++) *sum += lanes[j];
    return i;
}
#endif

static inline float bfloat16_to_float(uint16_t b) {
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t float_to_bfloat16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        return 0x7fc0;  /* NaN, as torch writes it */
    }
    return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

static void encode_values(const float *restrict values, char *restrict out, Py_ssize_t count, int kind) {
    if (kind == FLOAT16) {
        loose_float16 *o = (loose_float16 *)out;
        Py_ssize_t i = 0;
#ifdef HAVE_F16C_PATH
        if (cpu_has_f16c) i = encode_float16_f16c(values, out, count);
#endif
        for (; i < count; i++) o[i] = (_Float16)values[i];
    } else if (kind == BFLOAT16) {
        loose_uint16 *o = (loose_uint16 *)out;
        for (Py_ssize_t i = 0; i < count; i++) o[i] = float_to_bfloat16(values[i]);
    } else {
        memcpy(out, values, (size_t)count * sizeof(float));
    }
}

/* Writes the float32 values into `out` and returns their sum of squares (16 float32 partial sums). */
static double decode_values(const char *restrict data, float *restrict out, Py_ssize_t count, int kind) {
    enum { LANES = 16 };
    float partial[LANES] = {0};
    double sum = 0.0;
    Py_ssize_t i = 0;
#define DECODE_LOOP(READ)                                                                   \
    for (; i + LANES <= count; i += LANES) {                                                \
        for (int j = 0; j < LANES; j++) {                                                   \
            const float v = READ(i + j);                                                    \
            out[i + j] = v;                                                                 \
            partial[j] += v * v;                                                            \
        }                                                                                   \
    }                                                                                       \
    for (; i < count; i++) {                                                                \
        const float v = READ(i);                                                            \
        out[i] = v;                                                                         \
        partial[0] += v * v;                                                                \
    }
    if (kind == FLOAT16) {
        const loose_float16 *in = (const loose_float16 *)data;
#ifdef HAVE_F16C_PATH
        if (cpu_has_f16c) i = decode_float16_f16c(data, out, count, &sum);
#endif
#define READ_FLOAT16(k) ((float)in[k])
        DECODE_LOOP(READ_FLOAT16)
    } else if (kind == BFLOAT16) {
        const loose_uint16 *in = (const loose_uint16 *)data;
#define READ_BFLOAT16(k) bfloat16_to_float(in[k])
        DECODE_LOOP(READ_BFLOAT16)
    } else {
        const loose_float *in = (const loose_float *)data;
#define READ_FLOAT32(k) (in[k])
        DECODE_LOOP(READ_FLOAT32)
    }
    for (int j = 0; j < LANES; j++) sum += partial[j];
    return sum;
}

static Py_ssize_t itemsize_of(int kind) {
    return kind == FLOAT32 ? 4 : 2;
}

static int check_kind(int kind) {
    if (kind != FLOAT16 && kind != BFLOAT16 && kind != FLOAT32) {
        PyErr_SetString(PyExc_ValueError, "kind must be 0 (float16), 1 (bfloat16) or 2 (float32)");
        return 0;
    }
    return 1;
}

/* encode(values, template, regions, kind, prefix=b"") -> bytes: `prefix`, then `template` with each region
 * (start, count, offset) overwritten by values[start:start + count] in the wire dtype at byte `offset` of the
 * template; regions in offset order. The prefix lets a whole reply be written here, with no copy to join it. */
static PyObject *encode(PyObject *self, PyObject *args) {
    Py_buffer values, template, prefix = {0};
    PyObject *regions;
    int kind;
    if (!PyArg_ParseTuple(args, "y*y*Oi|y*", &values, &template, &regions, &kind, &prefix)) {
        return NULL;
    }
    PyObject *result = NULL, *sequence = NULL;
    if (!check_kind(kind)) goto done;
    sequence = PySequence_Fast(regions, "regions must be a sequence of (start, count, offset)");
    if (sequence == NULL) goto done;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(sequence), itemsize = itemsize_of(kind);
    const Py_ssize_t num_values = values.len / (Py_ssize_t)sizeof(float);
    result = PyBytes_FromStringAndSize(NULL, prefix.len + template.len);
    if (result == NULL) goto done;
    if (prefix.len) memcpy(PyBytes_AS_STRING(result), prefix.buf, (size_t)prefix.len);
    char *out = PyBytes_AS_STRING(result) + prefix.len;
    const char *from = template.buf;
    Py_ssize_t written = 0;
    for (Py_ssize_t r = 0; r < n; r++) {
        Py_ssize_t start, count, offset;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(sequence, r), "nnn", &start, &count, &offset)) {
            Py_CLEAR(result);
            goto done;
        }
        if (start < 0 || count < 0 || start > num_values - count || offset < written
                || offset > template.len - count * itemsize) {
            PyErr_SetString(PyExc_ValueError, "a region lies outside the values or the template, or out of order");
            Py_CLEAR(result);
            goto done;
        }
        memcpy(out + written, from + written, (size_t)(offset - written));
        encode_values((const float *)values.buf + start, out + offset, count, kind);
        written = offset + count * itemsize;
    }
    memcpy(out + written, from + written, (size_t)(template.len - written));
done:
    Py_XDECREF(sequence);
    PyBuffer_Release(&values);
    PyBuffer_Release(&template);
    if (prefix.obj != NULL) PyBuffer_Release(&prefix);
    return result;
}

/* decode(out, start, data, kind) -> float: the wire values in `data` written as float32 into out[start:], and
 * the sum of their squares (NaN or Inf when one is not finite). */
static PyObject *decode(PyObject *self, PyObject *args) {
    Py_buffer out, data;
    Py_ssize_t start;
    int kind;
    if (!PyArg_ParseTuple(args, "w*ny*i", &out, &start, &data, &kind)) {
        return NULL;
    }
    PyObject *result = NULL;
    if (check_kind(kind)) {
        const Py_ssize_t itemsize = itemsize_of(kind), count = data.len / itemsize;
        const Py_ssize_t room = out.len / (Py_ssize_t)sizeof(float);
        if (data.len % itemsize || start < 0 || start > room - count) {
            PyErr_SetString(PyExc_ValueError, "the data does not fit the output at that start");
        } else {
            double sum;
            Py_BEGIN_ALLOW_THREADS
            sum = decode_values(data.buf, (float *)out.buf + start, count, kind);
            Py_END_ALLOW_THREADS
            result = PyFloat_FromDouble(sum);
        }
    }
    PyBuffer_Release(&out);
    PyBuffer_Release(&data);
    return result;
}

static PyMethodDef methods[] = {
    {"encode", encode, METH_VARARGS,
     "encode(values, template, regions, kind, prefix=b'') -> bytes: prefix, then a copy of template with each "
     "(start, count, offset) region holding values[start:start + count] (float32) converted to the wire dtype "
     "(0 float16, 1 bfloat16, 2 float32)"},
    {"decode", decode, METH_VARARGS,
     "decode(out, start, data, kind) -> float: data (wire dtype `kind`) as float32 into out[start:]; returns the "
     "sum of their squares"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_wire", NULL, -1, methods};

PyMODINIT_FUNC PyInit__wire(void) {
#ifdef HAVE_F16C_PATH
    __builtin_cpu_init();
    cpu_has_f16c = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
#endif
    return PyModule_Create(&module);
}
