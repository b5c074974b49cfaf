// gpu_strided_limits.cu -- how fast can 64-byte blocks at a 128-byte stride be packed and unpacked
// on a Hopper GPU? Plain vectorised kernels (pycomm's scheme and variants with more loads in flight or
// streaming cache hints), cudaMemcpy2DAsync, and the Tensor Memory Accelerator (cp.async.bulk.tensor,
// several box sizes and stage counts), each checked byte for byte, against a device-to-device
// cudaMemcpyAsync of the packed bytes measured in the same rounds. A standalone program, not built by
// the package: benchmarks/README.md ("GPU figures") gives its results on an H200.
//
// Layout: N blocks ("rows") of 64 bytes.
//   strided buffer: row i at byte offset i*128 (bytes 64..127 of each 128 are gaps)
//   packed  buffer: row i at byte offset i*64
//   pack   = strided -> packed,   unpack = packed -> strided (gaps untouched)
//
// Build:  nvcc -std=c++17 -O3 -arch=sm_90a -o /tmp/gpu_strided_limits benchmarks/gpu_strided_limits.cu
// Run:    /tmp/gpu_strided_limits            (all variants)
//         /tmp/gpu_strided_limits tma tma_c2 (memcpy reference + the named variants)
//         /tmp/gpu_strided_limits --list     (print variant names)
//
// Exit status: 0 all good, 1 some variant failed (others still measured),
//              3 the CUDA context died (sticky error) -- rerun variants singly,
//              4 no usable CUDA device.

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

// ---------------------------------------------------------------------------
// error handling
// ---------------------------------------------------------------------------
#define CK(call)                                                              \
    do {                                                                      \
        cudaError_t e_ = (call);                                              \
        if (e_ != cudaSuccess) {                                              \
            printf("  CUDA ERROR: %s -> %s (%s) at %s:%d\n", #call,           \
                   cudaGetErrorName(e_), cudaGetErrorString(e_), __FILE__,    \
                   __LINE__);                                                 \
            return false;                                                     \
        }                                                                     \
    } while (0)

// After an error: is the context still usable? If not, exit(3).
static void die_if_context_broken(const char* where) {
    cudaError_t e1 = cudaDeviceSynchronize();
    cudaError_t e0 = cudaGetLastError();  // clears non-sticky errors
    void* p = nullptr;
    cudaError_t e2 = cudaMalloc(&p, 256);
    cudaError_t e3 = (e2 == cudaSuccess) ? cudaMemset(p, 0, 256) : e2;
    cudaError_t e4 = cudaDeviceSynchronize();
    if (p) cudaFree(p);
    if (e2 != cudaSuccess || e3 != cudaSuccess || e4 != cudaSuccess) {
        printf("FATAL (%s): CUDA context is broken (sticky error): sync=%s last=%s "
               "malloc=%s memset=%s sync2=%s. Exiting with status 3; rerun the "
               "remaining variants one per process.\n",
               where, cudaGetErrorName(e1), cudaGetErrorName(e0),
               cudaGetErrorName(e2), cudaGetErrorName(e3), cudaGetErrorName(e4));
        fflush(stdout);
        exit(3);
    }
}

// ---------------------------------------------------------------------------
// data pattern + verification kernels
// ---------------------------------------------------------------------------
__host__ __device__ __forceinline__ uint32_t hash32(uint32_t x) {
    x ^= x >> 16; x *= 0x7feb352du;
    x ^= x >> 15; x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}
__host__ __device__ __forceinline__ uint32_t pattern(uint32_t seed, uint64_t word) {
    return hash32((uint32_t)word * 2654435761u + seed + (uint32_t)(word >> 32) * 0x9e3779b9u);
}

static const uint32_t SEED_STRIDED = 0x1234567u;
static const uint32_t SEED_PACKED = 0x89abcdeu;
static const uint32_t PACK_PREFILL = 0xEEEEEEEEu;    // packed dst before pack
static const uint32_t UNPACK_PREFILL = 0xA5A5A5A5u;  // strided dst before unpack
static const size_t GUARD_BYTES = 64 * 1024;          // checked tail guard on dst

__global__ void fill_pattern(uint32_t* p, size_t words, uint32_t seed) {
    for (size_t w = blockIdx.x * (size_t)blockDim.x + threadIdx.x; w < words;
         w += (size_t)gridDim.x * blockDim.x)
        p[w] = pattern(seed, w);
}

// pack: packed word w (row w/16, col w%16) must equal strided word row*32+col;
// words past N*16 (guard) must still hold the prefill.
__global__ void verify_pack(const uint32_t* packed, size_t N, size_t totalWords,
                            unsigned long long* nbad, unsigned long long* firstBad) {
    for (size_t w = blockIdx.x * (size_t)blockDim.x + threadIdx.x; w < totalWords;
         w += (size_t)gridDim.x * blockDim.x) {
        uint32_t expect = (w < N * 16)
            ? pattern(SEED_STRIDED, (w >> 4) * 32 + (w & 15))
            : PACK_PREFILL;
        if (packed[w] != expect) {
            atomicAdd(nbad, 1ull);
            atomicMin(firstBad, (unsigned long long)w);
        }
    }
}
// unpack: strided word w (row w/32, col w%32): col<16 -> packed word row*16+col,
// gaps (col>=16) and guard must still hold the prefill.
__global__ void verify_unpack(const uint32_t* strided, size_t N, size_t totalWords,
                              unsigned long long* nbad, unsigned long long* firstBad) {
    for (size_t w = blockIdx.x * (size_t)blockDim.x + threadIdx.x; w < totalWords;
         w += (size_t)gridDim.x * blockDim.x) {
        uint32_t expect = (w < N * 32 && (w & 31) < 16)
            ? pattern(SEED_PACKED, (w >> 5) * 16 + (w & 31))
            : UNPACK_PREFILL;
        if (strided[w] != expect) {
            atomicAdd(nbad, 1ull);
            atomicMin(firstBad, (unsigned long long)w);
        }
    }
}

// ---------------------------------------------------------------------------
// plain kernels
// ---------------------------------------------------------------------------
// baseline (production-like): 256 threads = 4 lanes x 64 items, one uint4 each.
template <bool PACK>
__global__ void __launch_bounds__(256) copy_baseline(const uint4* __restrict__ src,
                                                     uint4* __restrict__ dst, size_t N) {
    const unsigned lane = threadIdx.x & 3u;
    const unsigned item = threadIdx.x >> 2;
    for (size_t i = (size_t)blockIdx.x * 64 + item; i < N; i += (size_t)gridDim.x * 64) {
        if (PACK) dst[i * 4 + lane] = src[i * 8 + lane];
        else      dst[i * 8 + lane] = src[i * 4 + lane];
    }
}

// same thread layout, but each thread issues U independent 16 B loads before
// its U stores (more bytes in flight per thread); optional streaming hints.
template <bool PACK, int U, bool CS>
__global__ void __launch_bounds__(256) copy_vec_ilp(const uint4* __restrict__ src,
                                                    uint4* __restrict__ dst, size_t N) {
    const unsigned lane = threadIdx.x & 3u;
    const unsigned item = threadIdx.x >> 2;
    const size_t step = (size_t)gridDim.x * 64 * U;
    for (size_t base = (size_t)blockIdx.x * 64 * U; base < N; base += step) {
        uint4 v[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            size_t i = base + (size_t)u * 64 + item;
            if (i < N) {
                const uint4* s = src + (PACK ? i * 8 : i * 4) + lane;
                v[u] = CS ? __ldcs(s) : *s;
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            size_t i = base + (size_t)u * 64 + item;
            if (i < N) {
                uint4* d = dst + (PACK ? i * 4 : i * 8) + lane;
                if (CS) __stcs(d, v[u]); else *d = v[u];
            }
        }
    }
}

// ---------------------------------------------------------------------------
// TMA / bulk-copy PTX wrappers (sm_90)
// ---------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
// make the mbarrier inits visible to the async proxy (TMA unit)
__device__ __forceinline__ void fence_mbarrier_init() {
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}
__device__ __forceinline__ void fence_proxy_async_smem() {
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}
// arrive (count 1 -> 0) and add `bytes` to the expected transaction count
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;"
                 ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint32_t bar, uint32_t parity) {
    uint32_t ok;
    asm volatile(
        "{\n\t"
        ".reg .pred p;\n\t"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
        "selp.u32 %0, 1, 0, p;\n\t"
        "}"
        : "=r"(ok)
        : "r"(bar), "r"(parity)
        : "memory");
    return ok != 0;
}
__device__ __forceinline__ uint64_t globaltimer_ns() {
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
// wait for completion of the phase with the given parity; watchdog 2 s so a
// broken pipeline reports an error instead of hanging the benchmark.
__device__ __forceinline__ bool mbar_wait(uint32_t bar, uint32_t parity, int* err) {
    if (mbar_try_wait(bar, parity)) return true;
    const uint64_t t0 = globaltimer_ns();
    while (!mbar_try_wait(bar, parity)) {
        if (globaltimer_ns() - t0 > 2000000000ull) {
            atomicExch(err, 1);
            return false;
        }
    }
    return true;
}
__device__ __forceinline__ void prefetch_tensormap(const CUtensorMap* map) {
    asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}
// 2-D tensor tile: global (tensor map) -> shared, completes tx bytes on mbarrier
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, int c0,
                                            int c1, uint32_t bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
        " [%0], [%1, {%2, %3}], [%4];"
        ::"r"(dst), "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
        : "memory");
}
// 2-D tensor tile: shared -> global (tensor map), bulk-group completion
__device__ __forceinline__ void tma_store_2d(const CUtensorMap* map, int c0, int c1,
                                             uint32_t src) {
    asm volatile(
        "cp.async.bulk.tensor.2d.global.shared::cta.tile.bulk_group"
        " [%0, {%1, %2}], [%3];"
        ::"l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(src)
        : "memory");
}
// 1-D bulk: global -> shared, completes tx bytes on mbarrier (bytes % 16 == 0)
__device__ __forceinline__ void bulk_load(uint32_t dst, const void* src, uint32_t bytes,
                                          uint32_t bar) {
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes"
        " [%0], [%1], %2, [%3];"
        ::"r"(dst), "l"((uint64_t)__cvta_generic_to_global(src)), "r"(bytes), "r"(bar)
        : "memory");
}
// 1-D bulk: shared -> global, bulk-group completion (bytes % 16 == 0)
__device__ __forceinline__ void bulk_store(void* dst, uint32_t src, uint32_t bytes) {
    asm volatile(
        "cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;"
        ::"l"((uint64_t)__cvta_generic_to_global(dst)), "r"(src), "r"(bytes)
        : "memory");
}
__device__ __forceinline__ void bulk_commit() {
    asm volatile("cp.async.bulk.commit_group;" ::: "memory");
}
// wait until at most N most recent bulk groups still have their smem source unread
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
    asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(N) : "memory");
}
// wait until all bulk groups have fully completed (writes done)
__device__ __forceinline__ void bulk_wait_all() {
    asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
}

constexpr uint32_t TMA_MAX_STAGES = 16;
constexpr uint32_t TMA_SMEM_ALIGN = 1024;  // >= 128 B required by TMA

// Persistent TMA pack/unpack. One elected thread (thread 0) per CTA drives an
// S-stage ring of R-row (R*64-byte) shared buffers. Tiles of R rows are assigned
// round-robin: CTA b handles tiles b, b+G, b+2G, ...
//   PACK:   load  = 2-D tensor TMA (strided, via map) -> smem  [mbarrier tx]
//           store = 1-D bulk smem -> packed                     [bulk_group]
//   UNPACK: load  = 1-D bulk packed -> smem                     [mbarrier tx]
//           store = 2-D tensor TMA smem -> strided (via map)    [bulk_group]
// Stage s's mbarrier completes once per use; the n-th use of a stage is phase n,
// waited for with parity n&1.
template <bool PACK>
__global__ void __launch_bounds__(32)
tma_copy_kernel(const __grid_constant__ CUtensorMap tmap, uint8_t* __restrict__ packed,
                uint32_t N, uint32_t R, uint32_t S, int* err) {
    extern __shared__ uint8_t dsmem[];
    __shared__ __align__(8) uint64_t bars[TMA_MAX_STAGES];

    if (threadIdx.x != 0) return;
    const uint32_t numTiles = (N + R - 1) / R;
    if (blockIdx.x >= numTiles) return;
    const uint32_t K = (numTiles - 1 - blockIdx.x) / gridDim.x + 1;  // my tile count
    const uint32_t tileBytes = R * 64u;

    const uint32_t raw = smem_addr(dsmem);
    const uint32_t buf0 = (raw + (TMA_SMEM_ALIGN - 1)) & ~(TMA_SMEM_ALIGN - 1);
    const uint32_t bar0 = smem_addr(&bars[0]);

    for (uint32_t s = 0; s < S; ++s) mbar_init(bar0 + 8 * s, 1);
    fence_mbarrier_init();
    fence_proxy_async_smem();
    prefetch_tensormap(&tmap);

    auto issue_load = [&](uint32_t k, uint32_t stage) {
        const uint32_t tile = blockIdx.x + k * gridDim.x;
        const uint32_t row0 = tile * R;
        const uint32_t bar = bar0 + 8 * stage;
        const uint32_t dst = buf0 + stage * tileBytes;
        if (PACK) {
            // Full box is always counted in tx bytes, also when rows >= N are
            // out of bounds (they are zero-filled in smem).
            mbar_arrive_expect_tx(bar, tileBytes);
            tma_load_2d(dst, &tmap, 0, (int)row0, bar);
        } else {
            const uint32_t rows = min(R, N - row0);
            const uint32_t bytes = rows * 64u;
            mbar_arrive_expect_tx(bar, bytes);
            bulk_load(dst, packed + (size_t)row0 * 64, bytes, bar);
        }
    };

    const uint32_t pro = min(S, K);
    for (uint32_t j = 0; j < pro; ++j) issue_load(j, j);

    uint32_t s = 0, phase = 0;
    for (uint32_t k = 0; k < K; ++k) {
        if (!mbar_wait(bar0 + 8 * s, phase, err)) break;  // watchdog fired
        // TMA wrote the buffer (async proxy), TMA will read it (async proxy);
        // the fence is not strictly needed for async->async, kept for safety.
        fence_proxy_async_smem();
        const uint32_t tile = blockIdx.x + k * gridDim.x;
        const uint32_t row0 = tile * R;
        const uint32_t src = buf0 + s * tileBytes;
        if (PACK) {
            const uint32_t rows = min(R, N - row0);
            bulk_store(packed + (size_t)row0 * 64, src, rows * 64u);
        } else {
            // rows >= N are clipped by TMA (not written)
            tma_store_2d(&tmap, 0, (int)row0, src);
        }
        bulk_commit();
        // the store of tile k-1 must have finished reading its buffer before
        // that buffer is refilled with tile k-1+S
        bulk_wait_read<1>();
        if (k >= 1 && k - 1 + S < K) {
            const uint32_t ps = (s == 0) ? S - 1 : s - 1;
            issue_load(k - 1 + S, ps);
        }
        if (++s == S) { s = 0; phase ^= 1u; }
    }
    bulk_wait_all();
}

// ---------------------------------------------------------------------------
// host side
// ---------------------------------------------------------------------------
enum Kind { K_MEMCPY, K_BASELINE, K_VEC, K_MEMCPY2D, K_TMA };

struct Variant {
    std::string name;
    Kind kind;
    // vec
    int U = 1;
    bool cs = false;
    // tma
    uint32_t R = 0, S = 0, ctasPerSM = 0;
    CUtensorMapL2promotion promo = CU_TENSOR_MAP_L2_PROMOTION_NONE;
    // per-size state
    CUtensorMap map;  // 128-byte aligned type (cuda.h)
    int grid = 0;
    size_t smem = 0;
    bool failed = false;   // failed for the current size (skip timing)
    bool printedOcc = false;
    std::string desc;
};

struct Bufs {
    size_t N = 0;          // rows
    uint8_t* strided = nullptr;  // N*128 + GUARD
    uint8_t* packed = nullptr;   // N*64 + GUARD
    uint8_t* mdst = nullptr;     // N*64 (memcpy reference destination)
    int* err = nullptr;
    unsigned long long* bad = nullptr;  // [0]=count, [1]=first index
};

static int g_sms = 0;
static size_t g_optinSmem = 0;
static PFN_cuTensorMapEncodeTiled_v12000 g_encode = nullptr;

static size_t gridFor(size_t work, size_t cap) {
    return std::max<size_t>(1, std::min(work, cap));
}

static cudaError_t launch(const Variant& v, bool pack, const Bufs& b, cudaStream_t st) {
    const size_t N = b.N;
    switch (v.kind) {
        case K_MEMCPY:
            return cudaMemcpyAsync(b.mdst, b.packed, N * 64, cudaMemcpyDeviceToDevice, st);
        case K_MEMCPY2D:
            if (pack)
                return cudaMemcpy2DAsync(b.packed, 64, b.strided, 128, 64, N,
                                         cudaMemcpyDeviceToDevice, st);
            return cudaMemcpy2DAsync(b.strided, 128, b.packed, 64, 64, N,
                                     cudaMemcpyDeviceToDevice, st);
        case K_BASELINE: {
            unsigned g = (unsigned)gridFor((N + 63) / 64, (size_t)g_sms * 16);
            if (pack)
                copy_baseline<true><<<g, 256, 0, st>>>((const uint4*)b.strided, (uint4*)b.packed, N);
            else
                copy_baseline<false><<<g, 256, 0, st>>>((const uint4*)b.packed, (uint4*)b.strided, N);
            return cudaGetLastError();
        }
        case K_VEC: {
            unsigned g = (unsigned)gridFor((N + 64 * v.U - 1) / (64 * v.U), (size_t)g_sms * 8);
            const uint4* src = (const uint4*)(pack ? b.strided : b.packed);
            uint4* dst = (uint4*)(pack ? b.packed : b.strided);
#define VEC_CASE(UU, CSV)                                                                 \
    if (v.U == UU && v.cs == CSV) {                                                       \
        if (pack) copy_vec_ilp<true, UU, CSV><<<g, 256, 0, st>>>(src, dst, N);            \
        else      copy_vec_ilp<false, UU, CSV><<<g, 256, 0, st>>>(src, dst, N);           \
        return cudaGetLastError();                                                        \
    }
            VEC_CASE(4, false)
            VEC_CASE(4, true)
            VEC_CASE(8, false)
#undef VEC_CASE
            return cudaErrorInvalidValue;
        }
        case K_TMA:
            if (pack)
                tma_copy_kernel<true><<<v.grid, 32, v.smem, st>>>(v.map, b.packed, (uint32_t)N,
                                                                  v.R, v.S, b.err);
            else
                tma_copy_kernel<false><<<v.grid, 32, v.smem, st>>>(v.map, b.packed, (uint32_t)N,
                                                                   v.R, v.S, b.err);
            return cudaGetLastError();
    }
    return cudaErrorInvalidValue;
}

// per-size setup (tensor map, grid, smem attribute)
static bool prepare(Variant& v, const Bufs& b) {
    v.failed = false;
    if (v.kind == K_BASELINE) v.grid = (int)gridFor((b.N + 63) / 64, (size_t)g_sms * 16);
    if (v.kind == K_VEC) v.grid = (int)gridFor((b.N + 64 * v.U - 1) / (64 * v.U), (size_t)g_sms * 8);
    if (v.kind != K_TMA) return true;
    if (!g_encode) {
        printf("  %s: cuTensorMapEncodeTiled unavailable, skipped\n", v.name.c_str());
        return false;
    }
    // R even keeps every stage buffer 128-byte aligned (R*64 % 128 == 0)
    if (v.S < 2 || v.S > TMA_MAX_STAGES || v.R < 2 || v.R > 256 || (v.R & 1)) {
        printf("  %s: bad config R=%u S=%u\n", v.name.c_str(), v.R, v.S);
        return false;
    }
    if (((uintptr_t)b.strided & 15) || ((uintptr_t)b.packed & 15)) {
        printf("  %s: buffers not 16-byte aligned\n", v.name.c_str());
        return false;
    }
    cuuint64_t gdim[2] = {64, (cuuint64_t)b.N};
    cuuint64_t gstride[1] = {128};
    cuuint32_t box[2] = {64, v.R};
    cuuint32_t estride[2] = {1, 1};
    CUresult r = g_encode(&v.map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, (void*)b.strided, gdim,
                          gstride, box, estride, CU_TENSOR_MAP_INTERLEAVE_NONE,
                          CU_TENSOR_MAP_SWIZZLE_NONE, v.promo,
                          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
        printf("  %s: cuTensorMapEncodeTiled failed with CUresult %d (N=%zu R=%u)\n",
               v.name.c_str(), (int)r, b.N, v.R);
        return false;
    }
    v.smem = (size_t)v.S * v.R * 64 + TMA_SMEM_ALIGN;
    if (v.smem + TMA_MAX_STAGES * 8 > g_optinSmem) {
        printf("  %s: needs %zu B smem > opt-in max %zu\n", v.name.c_str(), v.smem, g_optinSmem);
        return false;
    }
    CK(cudaFuncSetAttribute(tma_copy_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                            (int)v.smem));
    CK(cudaFuncSetAttribute(tma_copy_kernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                            (int)v.smem));
    size_t tiles = (b.N + v.R - 1) / v.R;
    v.grid = (int)gridFor(tiles, (size_t)g_sms * v.ctasPerSM);
    if (!v.printedOcc) {
        int occP = 0, occU = 0;
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occP, tma_copy_kernel<true>, 32, v.smem));
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occU, tma_copy_kernel<false>, 32, v.smem));
        printf("  [%s] R=%u rows (box %u B) S=%u stages, %u CTA/SM requested, dyn smem %zu B, "
               "occupancy pack %d unpack %d CTA/SM, L2 promo %d\n",
               v.name.c_str(), v.R, v.R * 64, v.S, v.ctasPerSM, v.smem, occP, occU, (int)v.promo);
        v.printedOcc = true;
    }
    return true;
}

// run once and compare byte-for-byte (word-wise) with the expected pattern
static bool verify(Variant& v, bool pack, const Bufs& b, cudaStream_t st) {
    const size_t N = b.N;
    if (pack) CK(cudaMemsetAsync(b.packed, 0xEE, N * 64 + GUARD_BYTES, st));
    else      CK(cudaMemsetAsync(b.strided, 0xA5, N * 128 + GUARD_BYTES, st));
    CK(cudaMemsetAsync(b.err, 0, sizeof(int), st));
    CK(cudaMemsetAsync(b.bad, 0, sizeof(unsigned long long), st));
    CK(cudaMemsetAsync(b.bad + 1, 0xFF, sizeof(unsigned long long), st));
    cudaError_t e = launch(v, pack, b, st);
    if (e != cudaSuccess) {
        printf("  %s: launch failed: %s (%s)\n", v.name.c_str(), cudaGetErrorName(e),
               cudaGetErrorString(e));
        return false;
    }
    CK(cudaStreamSynchronize(st));
    int herr = 0;
    CK(cudaMemcpy(&herr, b.err, sizeof(int), cudaMemcpyDeviceToHost));
    if (herr) {
        printf("  %s: device watchdog fired (mbarrier wait > 2 s): pipeline stuck\n",
               v.name.c_str());
        return false;
    }
    const size_t words = (pack ? N * 64 : N * 128) / 4 + GUARD_BYTES / 4;
    const unsigned vg = (unsigned)std::min<size_t>((words + 255) / 256, (size_t)g_sms * 32);
    if (pack) verify_pack<<<vg, 256, 0, st>>>((const uint32_t*)b.packed, N, words, b.bad, b.bad + 1);
    else      verify_unpack<<<vg, 256, 0, st>>>((const uint32_t*)b.strided, N, words, b.bad, b.bad + 1);
    CK(cudaGetLastError());
    CK(cudaStreamSynchronize(st));
    unsigned long long hb[2];
    CK(cudaMemcpy(hb, b.bad, sizeof(hb), cudaMemcpyDeviceToHost));
    if (hb[0]) {
        uint32_t got = 0;
        const uint8_t* base = pack ? b.packed : b.strided;
        CK(cudaMemcpy(&got, base + hb[1] * 4, 4, cudaMemcpyDeviceToHost));
        size_t w = hb[1];
        uint32_t expect;
        if (pack) expect = (w < N * 16) ? pattern(SEED_STRIDED, (w >> 4) * 32 + (w & 15)) : PACK_PREFILL;
        else expect = (w < N * 32 && (w & 31) < 16) ? pattern(SEED_PACKED, (w >> 5) * 16 + (w & 31))
                                                    : UNPACK_PREFILL;
        printf("  %s: VERIFY FAILED (%s, N=%zu rows): %llu bad 32-bit words; first at dst byte "
               "%llu (row %llu): got 0x%08x expected 0x%08x\n",
               v.name.c_str(), pack ? "pack" : "unpack", N, hb[0], hb[1] * 4,
               pack ? hb[1] / 16 : hb[1] / 32, got, expect);
        return false;
    }
    return true;
}

static float time_iters(const Variant& v, bool pack, const Bufs& b, cudaStream_t st,
                        cudaEvent_t e0, cudaEvent_t e1, int iters, cudaError_t* err) {
    *err = cudaEventRecord(e0, st);
    if (*err) return -1.f;
    for (int i = 0; i < iters; ++i) {
        *err = launch(v, pack, b, st);
        if (*err) return -1.f;
    }
    *err = cudaEventRecord(e1, st);
    if (*err) return -1.f;
    *err = cudaEventSynchronize(e1);
    if (*err) return -1.f;
    float ms = 0.f;
    *err = cudaEventElapsedTime(&ms, e0, e1);
    if (*err) return -1.f;
    return ms;
}

static bool g_anyFail = false;

// After a CUDA error in `stage` of variant `v`: reports it and leaves `v` out of the rest. False
// when there was no error.
static bool variant_failed(Variant& v, cudaError_t err, const char* stage) {
    if (err == cudaSuccess) return false;
    printf("  %s: %s error %s\n", v.name.c_str(), stage, cudaGetErrorString(err));
    v.failed = true;
    g_anyFail = true;
    die_if_context_broken(v.name.c_str());
    return true;
}

static void run_case(std::vector<Variant>& vars, bool pack, Bufs& b, cudaStream_t st,
                     const char* sizeLabel) {
    const char* dir = pack ? "pack" : "unpack";
    const size_t N = b.N;
    // fill the source
    {
        const size_t words = pack ? N * 32 : N * 16;
        uint32_t* p = (uint32_t*)(pack ? b.strided : b.packed);
        unsigned g = (unsigned)std::min<size_t>((words + 255) / 256, (size_t)g_sms * 32);
        fill_pattern<<<g, 256, 0, st>>>(p, words, pack ? SEED_STRIDED : SEED_PACKED);
        cudaError_t e = cudaGetLastError();
        if (e == cudaSuccess) e = cudaStreamSynchronize(st);
        if (e != cudaSuccess) {
            printf("  fill failed: %s\n", cudaGetErrorString(e));
            g_anyFail = true;
            die_if_context_broken("fill");
            return;
        }
    }
    // verify every variant before timing
    std::vector<int> active;
    for (size_t i = 0; i < vars.size(); ++i) {
        Variant& v = vars[i];
        bool ok = true;
        if (v.kind != K_MEMCPY) {
            ok = prepare(v, b) && verify(v, pack, b, st);
        }
        if (!ok) {
            printf("%-6s %-6s %-12s FAILED (see above) -- not timed\n", sizeLabel, dir,
                   v.name.c_str());
            v.failed = true;
            g_anyFail = true;
            die_if_context_broken(v.name.c_str());
            continue;
        }
        active.push_back((int)i);
    }
    if (active.empty() || vars[active[0]].kind != K_MEMCPY) {
        printf("  memcpy reference missing, skip timing\n");
        return;
    }
    cudaEvent_t e0, e1;
    if (cudaEventCreate(&e0) || cudaEventCreate(&e1)) {
        printf("  event create failed\n");
        g_anyFail = true;
        return;
    }
    // calibrate: each timed round of a variant lasts >= 2 ms
    std::vector<int> iters(vars.size(), 0);
    for (int i : active) {
        Variant& v = vars[i];
        int it = 1;
        for (;;) {
            cudaError_t err;
            float ms = time_iters(v, pack, b, st, e0, e1, it, &err);
            if (variant_failed(v, err, "calibration")) break;
            if (ms >= 2.0f || it >= (1 << 22)) break;
            double want = ms > 1e-4 ? 2.3 * it / ms : it * 16.0;
            it = (int)std::min<double>(1 << 22, std::max<double>(it * 2.0, want));
        }
        iters[i] = it;
    }
    // 7 rounds, all variants (incl. memcpy) per round
    const int ROUNDS = 7;
    std::vector<std::vector<float>> t(vars.size());
    for (int r = 0; r < ROUNDS; ++r) {
        for (int i : active) {
            Variant& v = vars[i];
            if (v.failed) continue;
            cudaError_t err;
            float ms = time_iters(v, pack, b, st, e0, e1, iters[i], &err);
            if (variant_failed(v, err, "timing")) continue;
            t[i].push_back(ms * 1000.f / iters[i]);  // us per call
        }
    }
    // watchdog during timing?
    {
        int herr = 0;
        if (cudaMemcpy(&herr, b.err, sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess && herr)
            printf("  WARNING: device watchdog fired during timing (%s %s)\n", sizeLabel, dir);
    }
    auto median = [](std::vector<float> x) {
        std::sort(x.begin(), x.end());
        return x[x.size() / 2];
    };
    const int mi = active[0];
    if (t[mi].size() != (size_t)ROUNDS) {
        printf("  memcpy reference failed during timing\n");
        return;
    }
    const double bytes = (double)N * 64;
    const float tm = median(t[mi]);
    for (int i : active) {
        Variant& v = vars[i];
        if (v.failed || t[i].size() != (size_t)ROUNDS) continue;
        float tv = median(t[i]);
        float tmin = *std::min_element(t[i].begin(), t[i].end());
        float tmax = *std::max_element(t[i].begin(), t[i].end());
        printf("%-6s %-6s %-12s %10.2f us  %8.1f GB/s  ratio %.3f   [min %.2f max %.2f us, "
               "%d calls/round, grid %d]%s\n",
               sizeLabel, dir, v.name.c_str(), tv, bytes / (tv * 1e-6) / 1e9, tm / tv, tmin,
               tmax, iters[i], v.grid,
               v.kind == K_MEMCPY ? "  <- cudaMemcpyAsync D2D of packed bytes" : "");
    }
    fflush(stdout);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
}

static bool alloc_bufs(Bufs& b, size_t N) {
    b.N = N;
    CK(cudaMalloc(&b.strided, N * 128 + GUARD_BYTES));
    CK(cudaMalloc(&b.packed, N * 64 + GUARD_BYTES));
    CK(cudaMalloc(&b.mdst, N * 64 + GUARD_BYTES));
    return true;
}
static void free_bufs(Bufs& b) {
    if (b.strided) cudaFree(b.strided);
    if (b.packed) cudaFree(b.packed);
    if (b.mdst) cudaFree(b.mdst);
    b.strided = b.packed = b.mdst = nullptr;
}

static std::vector<Variant> all_variants() {
    std::vector<Variant> v;
    auto add = [&](Variant x) { v.push_back(x); };
    Variant m; m.name = "memcpy"; m.kind = K_MEMCPY; add(m);
    Variant base; base.name = "baseline"; base.kind = K_BASELINE; add(base);
    Variant v4; v4.name = "vec_ilp4"; v4.kind = K_VEC; v4.U = 4; add(v4);
    Variant v4c; v4c.name = "vec_ilp4_cs"; v4c.kind = K_VEC; v4c.U = 4; v4c.cs = true; add(v4c);
    Variant v8; v8.name = "vec_ilp8"; v8.kind = K_VEC; v8.U = 8; add(v8);
    Variant m2; m2.name = "memcpy2d"; m2.kind = K_MEMCPY2D; add(m2);
    auto tma = [&](const char* n, uint32_t R, uint32_t S, uint32_t c,
                   CUtensorMapL2promotion p = CU_TENSOR_MAP_L2_PROMOTION_NONE) {
        Variant x; x.name = n; x.kind = K_TMA; x.R = R; x.S = S; x.ctasPerSM = c; x.promo = p;
        add(x);
    };
    tma("tma", 256, 4, 1);         // 16 KiB boxes, 4 stages, 1 CTA/SM  (64 KiB smem)
    tma("tma_c2", 256, 4, 2);      // 16 KiB boxes, 4 stages, 2 CTA/SM
    tma("tma_r128", 128, 6, 2);    // 8 KiB boxes, 6 stages, 2 CTA/SM
    tma("tma_small", 32, 16, 4);   // 2 KiB boxes, 16 stages, 4 CTA/SM
    tma("tma_l2p256", 256, 4, 2, CU_TENSOR_MAP_L2_PROMOTION_L2_256B);
    return v;
}

int main(int argc, char** argv) {
    setvbuf(stdout, nullptr, _IOLBF, 0);
    std::vector<Variant> vars = all_variants();
    if (argc > 1 && std::string(argv[1]) == "--list") {
        for (auto& v : vars)
            if (v.kind != K_MEMCPY) printf("%s\n", v.name.c_str());
        return 0;
    }
    if (argc > 1) {  // filter: memcpy reference + named variants
        std::vector<Variant> f;
        f.push_back(vars[0]);
        for (int a = 1; a < argc; ++a) {
            bool found = false;
            for (auto& v : vars)
                if (v.kind != K_MEMCPY && v.name == argv[a]) { f.push_back(v); found = true; }
            if (!found) { printf("unknown variant '%s' (try --list)\n", argv[a]); return 1; }
        }
        vars = f;
    }

    int dev = 0;
    cudaDeviceProp prop;
    {
        cudaError_t e = cudaSetDevice(dev);
        if (e == cudaSuccess) e = cudaGetDeviceProperties(&prop, dev);
        if (e != cudaSuccess) {
            printf("FATAL: no usable CUDA device: %s\n", cudaGetErrorString(e));
            return 4;
        }
    }
    int drv = 0, rt = 0;
    cudaDriverGetVersion(&drv);
    cudaRuntimeGetVersion(&rt);
    g_sms = prop.multiProcessorCount;
    g_optinSmem = prop.sharedMemPerBlockOptin;
    printf("device: %s  (cc %d.%d)  SMs: %d  L2: %.1f MiB  smem opt-in/block: %zu B  "
           "global mem: %.1f GiB  driver %d runtime %d\n",
           prop.name, prop.major, prop.minor, g_sms, prop.l2CacheSize / 1048576.0,
           (size_t)prop.sharedMemPerBlockOptin, prop.totalGlobalMem / 1073741824.0, drv, rt);
    if (prop.major < 9) printf("WARNING: TMA needs compute capability 9.0+\n");

    {
        cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
        void* fn = nullptr;
        cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000,
                                                         cudaEnableDefault, &q);
        if (e != cudaSuccess || q != cudaDriverEntryPointSuccess || !fn) {
            printf("WARNING: cudaGetDriverEntryPointByVersion(cuTensorMapEncodeTiled) failed: "
                   "err=%s query=%d -- TMA variants disabled\n",
                   cudaGetErrorString(e), (int)q);
            cudaGetLastError();
        } else {
            g_encode = (PFN_cuTensorMapEncodeTiled_v12000)fn;
        }
    }

    cudaStream_t st;
    if (cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking) != cudaSuccess) {
        printf("FATAL: stream create failed\n");
        return 3;
    }

    Bufs b;
    if (cudaMalloc(&b.err, sizeof(int)) || cudaMalloc(&b.bad, 2 * sizeof(unsigned long long))) {
        printf("FATAL: small malloc failed\n");
        return 3;
    }

    printf("columns: size dir variant  median-us/call  GB/s(packed bytes)  ratio=memcpy_time/"
           "variant_time  [min max, calls per round, grid (0 = n/a)]\n");
    printf("median of 7 rounds, each round >= 2 ms; every variant verified byte-exact first "
           "(incl. gaps and a %zu-byte guard after dst)\n", GUARD_BYTES);

    const size_t MiB = 1 << 20;
    const size_t sizesMiB[] = {1, 16, 64, 256};
    for (size_t sm : sizesMiB) {
        const size_t N = sm * MiB / 64;
        char label[32];
        snprintf(label, sizeof label, "%zuMiB", sm);
        printf("---- packed %zu MiB = %zu rows of 64 B (strided %zu MiB)\n", sm, N, 2 * sm);
        if (!alloc_bufs(b, N)) {
            g_anyFail = true;
            free_bufs(b);
            die_if_context_broken("alloc");
            continue;
        }
        run_case(vars, true, b, st, label);
        run_case(vars, false, b, st, label);
        free_bufs(b);
    }

    // tail handling: N not a multiple of the box rows (correctness only)
    printf("---- tail checks (N not a multiple of R; correctness only)\n");
    const size_t tailN[] = {1, 37, 255, 257, 300, 16384 + 37, 100003};
    for (size_t N : tailN) {
        if (!alloc_bufs(b, N)) { g_anyFail = true; free_bufs(b); die_if_context_broken("alloc"); continue; }
        for (int pk = 1; pk >= 0; --pk) {
            const bool pack = pk;
            const size_t words = pack ? N * 32 : N * 16;
            uint32_t* p = (uint32_t*)(pack ? b.strided : b.packed);
            fill_pattern<<<(unsigned)std::min<size_t>((words + 255) / 256, 4096), 256, 0, st>>>(
                p, words, pack ? SEED_STRIDED : SEED_PACKED);
            if (cudaStreamSynchronize(st) != cudaSuccess) { die_if_context_broken("tail fill"); continue; }
            std::string okList, badList;
            for (auto& v : vars) {
                if (v.kind == K_MEMCPY) continue;
                bool ok = prepare(v, b) && verify(v, pack, b, st);
                if (!ok) { g_anyFail = true; die_if_context_broken(v.name.c_str()); }
                (ok ? okList : badList) += " " + v.name;
            }
            printf("tail N=%-7zu %-6s OK:%s%s%s\n", N, pack ? "pack" : "unpack", okList.c_str(),
                   badList.empty() ? "" : "   FAILED:", badList.c_str());
        }
        free_bufs(b);
    }

    cudaFree(b.err);
    cudaFree(b.bad);
    cudaStreamDestroy(st);
    printf("done: %s\n", g_anyFail ? "SOME VARIANTS FAILED (see above)" : "all variants verified");
    return g_anyFail ? 1 : 0;
}
