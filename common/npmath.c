#include "npmath.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

float np_logf(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    float e = (float)((int32_t)(bits >> 23) - 126);
    const uint32_t mbits = (bits & 0x7fffffu) | (126u << 23); /* mantissa in [0.5, 1) */
    float m;
    memcpy(&m, &mbits, sizeof m);
    if (m <= 0.707106781186547524400844362104849039f) { /* NPY_SQRT1_2f */
        m = m + m;
        e = e - 1.0f;
    }
    const float t = m - 1.0f;
    float num = fmaf(2.589979117907922693523e-02f, t, 3.808837741388407920751e-01f);
    num = fmaf(num, t, 1.480000633576506585156e+00f);
    num = fmaf(num, t, 2.112677543073053063722e+00f);
    num = fmaf(num, t, 9.999999999999998702752e-01f);
    num = fmaf(num, t, 0.0f);
    float den = fmaf(5.875095403124574342950e-03f, t, 1.546476374983906719538e-01f);
    den = fmaf(den, t, 9.864942958519418960339e-01f);
    den = fmaf(den, t, 2.453006071784736363091e+00f);
    den = fmaf(den, t, 2.612677543073109236779e+00f);
    den = fmaf(den, t, 1.0f);
    return fmaf(e, 0.693147180559945309417232121458176568f, num / den); /* NPY_LOGE2f */
}
