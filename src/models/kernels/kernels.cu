// floor33's own CUDA kernels, compiled at run time with NVRTC (see cuda.rs). No headers are
// included: half types travel as 16-bit words and are converted with PTX instructions or bit
// operations, so the source compiles with a bare NVRTC and no CUDA include path.
//
// Every reduction accumulates in f32 whatever the storage type.

#define NEG_INF (__int_as_float(0xff800000))

struct f16_t { unsigned short bits; };
struct bf16_t { unsigned short bits; };

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(f16_t v) {
    float r;
    asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(v.bits));
    return r;
}
__device__ __forceinline__ float to_f32(bf16_t v) {
    return __uint_as_float(((unsigned int)v.bits) << 16);
}

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ f16_t from_f32<f16_t>(float v) {
    f16_t r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(v));
    return r;
}
template <> __device__ __forceinline__ bf16_t from_f32<bf16_t>(float v) {
    // Round to nearest even; NaN stays a quiet NaN.
    unsigned int u = __float_as_uint(v);
    bf16_t r;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        r.bits = 0x7fc0;
    } else {
        u += 0x7fffu + ((u >> 16) & 1u);
        r.bits = (unsigned short)(u >> 16);
    }
    return r;
}

// Sum of `v` over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ float block_sum(float v, float* shared) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : 0.f;
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ float block_max(float v, float* shared) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : NEG_INF;
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// GroupNorm over a contiguous (N*F, C, S) tensor whose statistics are joint over the F frames
// of each sample (F = 1: plain GroupNorm), one block per (sample, group). Statistics are sums
// shifted by the group's first element (robust when |mean| >> std) in f32; the affine (f32
// weight and bias) and the optional SiLU run in f32 and the result is rounded once to U (the
// input type, or the half compute type of a network whose residual stream T is f32).
template <typename T, typename U>
__device__ void group_norm(const T* x, U* y, const float* weight, const float* bias,
                           int groups, int frames, int channels, int channels_per_group,
                           long spatial, float eps, int silu) {
    __shared__ float shared[32];
    const int sample = blockIdx.x / groups, group = blockIdx.x % groups;
    const long chunk = (long)channels_per_group * spatial;   // one frame's part of the group
    const long row = (long)channels * spatial;
    const long len = chunk * frames;
    const long base = (long)sample * frames * row + (long)group * chunk;
    const float shift = to_f32(x[base]);
    float sum = 0.f, sum_sq = 0.f;
    for (long i = threadIdx.x; i < len; i += blockDim.x) {
        const long f = i / chunk, j = i - f * chunk;
        const float d = to_f32(x[base + f * row + j]) - shift;
        sum += d;
        sum_sq += d * d;
    }
    sum = block_sum(sum, shared);
    sum_sq = block_sum(sum_sq, shared);
    const float mean_shifted = sum / (float)len;
    const float var = fmaxf(sum_sq / (float)len - mean_shifted * mean_shifted, 0.f);
    const float mean = shift + mean_shifted;
    const float inv_std = rsqrtf(var + eps);
    for (long i = threadIdx.x; i < len; i += blockDim.x) {
        const long f = i / chunk, j = i - f * chunk;
        const int c = group * channels_per_group + (int)(j / spatial);
        float v = (to_f32(x[base + f * row + j]) - mean) * inv_std * weight[c] + bias[c];
        if (silu) v = v / (1.f + expf(-v));
        y[base + f * row + j] = from_f32<U>(v);
    }
}

// Softmax over rows of `cols` contiguous values, one block per row, all arithmetic in f32.
template <typename T>
__device__ void softmax_rows(const T* x, T* y, int cols) {
    __shared__ float shared[32];
    const long base = (long)blockIdx.x * cols;
    float m = NEG_INF;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) m = fmaxf(m, to_f32(x[base + i]));
    m = block_max(m, shared);
    float s = 0.f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) s += expf(to_f32(x[base + i]) - m);
    s = block_sum(s, shared);
    const float inv = 1.f / s;
    for (int i = threadIdx.x; i < cols; i += blockDim.x)
        y[base + i] = from_f32<T>(expf(to_f32(x[base + i]) - m) * inv);
}

#define FLOOR33_GROUP_NORM(T, TS, U, US)                                                        \
    extern "C" __global__ void group_norm_##TS##_##US(                                          \
        const T* x, U* y, const float* weight, const float* bias, int groups, int frames,       \
        int channels, int channels_per_group, long spatial, float eps, int silu) {              \
        group_norm<T, U>(x, y, weight, bias, groups, frames, channels, channels_per_group,       \
                         spatial, eps, silu);                                                   \
    }

#define FLOOR33_KERNELS(T, SUFFIX)                                                              \
    FLOOR33_GROUP_NORM(T, SUFFIX, float, f32)                                                   \
    FLOOR33_GROUP_NORM(T, SUFFIX, f16_t, f16)                                                   \
    FLOOR33_GROUP_NORM(T, SUFFIX, bf16_t, bf16)                                                 \
    extern "C" __global__ void softmax_##SUFFIX(const T* x, T* y, int cols) {                   \
        softmax_rows<T>(x, y, cols);                                                            \
    }

FLOOR33_KERNELS(float, f32)
FLOOR33_KERNELS(f16_t, f16)
FLOOR33_KERNELS(bf16_t, bf16)
