// y[M, N] = x[M, K] @ W[K, N] for few rows M (a decode step's batch), with W packed in column panels.
//
// The XLA:CPU custom call behind merg_jax/kernels/panel_matmul.py (which builds, loads and documents it).
//
// Layout. W is stored as panels of P = 32 columns, each panel contiguous: packed[l, p, k, j] = W_l[k, 32p + j]
// (`[L, ceil(N/32), K, 32]`, N padded with zeros to a whole panel; the leading axis stacks layers, `layer`
// picks one). A panel is one forward stream of K·128 bytes, so the hardware prefetchers see a single sequential
// read per panel instead of K short strided ones.
//
// Loop. For each panel and each block of up to 8 rows of x: 2 vectors of 16 floats per row accumulate in
// registers (16 accumulators at 8 rows) over all K; every 64-byte load of W feeds one FMA per row. W is read
// once per block of 8 rows, so a decode step's batch of ≤ 8 streams the weights exactly once.
//
// Threads. The panels are split into one contiguous range per thread of XLA's intra-op pool (fewer for small
// matrices: at least kMinBytesPerThread of weights each); the calling thread runs a range too, claims any range
// no pool thread has started (a pool that is busy, or of size 1, cannot stall it), and waits only for ranges
// already running.

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kPanel = 32;  // columns per panel: 2 vectors of 16 floats
// Below this many bytes of weights per thread, waking a pool thread costs more than it saves (the tiny
// config's 64-176 KiB matrices ran slower split in two: docs/performance.md).
constexpr int64_t kMinBytesPerThread = 256 << 10;
typedef float v16 __attribute__((vector_size(64), aligned(4)));

// out[0:MB, panel columns] = x[0:MB, :] @ panel, for one panel of K rows × 32 columns; `cols` ≤ 32 are stored.
template <int MB>
inline void Panel(const float* __restrict x, int64_t ldx, const float* __restrict panel, int64_t K,
                  float* __restrict out, int64_t ldo, int64_t cols) {
  v16 acc[MB][2];
  for (int m = 0; m < MB; ++m) acc[m][0] = acc[m][1] = v16{};
  const float* w = panel;
  for (int64_t k = 0; k < K; ++k, w += kPanel) {
    v16 w0, w1;
    std::memcpy(&w0, w, 64);
    std::memcpy(&w1, w + 16, 64);
    for (int m = 0; m < MB; ++m) {
      const float xs = x[m * ldx + k];
      acc[m][0] += xs * w0;
      acc[m][1] += xs * w1;
    }
  }
  for (int m = 0; m < MB; ++m) {
    if (cols == kPanel) {
      std::memcpy(out + m * ldo, &acc[m][0], 64);
      std::memcpy(out + m * ldo + 16, &acc[m][1], 64);
    } else {
      float tmp[kPanel];
      std::memcpy(tmp, &acc[m][0], 64);
      std::memcpy(tmp + 16, &acc[m][1], 64);
      std::memcpy(out + m * ldo, tmp, cols * sizeof(float));
    }
  }
}

// Panels [p0, p1) for every row of x: each panel once per block of 8 rows, the blocks one after another while
// the panel (K·128 bytes) is still in L1/L2 (a prefill's B·P rows).
void RunPanels(const float* x, const float* packed, float* out, int64_t M, int64_t K, int64_t N, int64_t p0,
               int64_t p1) {
  for (int64_t p = p0; p < p1; ++p) {
    const float* panel = packed + p * K * kPanel;
    const int64_t n0 = p * kPanel;
    const int64_t cols = N - n0 < kPanel ? N - n0 : kPanel;
    for (int64_t m0 = 0; m0 < M; m0 += 8) {
      const float* xm = x + m0 * K;
      float* om = out + m0 * N + n0;
      switch (M - m0 < 8 ? M - m0 : 8) {
        case 1: Panel<1>(xm, K, panel, K, om, N, cols); break;
        case 2: Panel<2>(xm, K, panel, K, om, N, cols); break;
        case 3: Panel<3>(xm, K, panel, K, om, N, cols); break;
        case 4: Panel<4>(xm, K, panel, K, om, N, cols); break;
        case 5: Panel<5>(xm, K, panel, K, om, N, cols); break;
        case 6: Panel<6>(xm, K, panel, K, om, N, cols); break;
        case 7: Panel<7>(xm, K, panel, K, om, N, cols); break;
        default: Panel<8>(xm, K, panel, K, om, N, cols); break;
      }
    }
  }
}

ffi::Error PanelMatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> packed,
                           ffi::ResultBuffer<ffi::F32> y, int64_t layer) {
  const auto xd = x.dimensions();
  const auto wd = packed.dimensions();
  const auto yd = y->dimensions();
  if (xd.size() != 2 || wd.size() != 4 || yd.size() != 2 || wd[3] != kPanel) {
    return ffi::Error::InvalidArgument("panel_matmul: expected x [M, K], packed [L, P, K, 32], y [M, N]");
  }
  const int64_t M = xd[0], K = xd[1], L = wd[0], P = wd[1], N = yd[1];
  if (wd[2] != K || yd[0] != M || (N + kPanel - 1) / kPanel != P || layer < 0 || layer >= L) {
    return ffi::Error::InvalidArgument("panel_matmul: x, packed, y and layer do not agree");
  }
  const float* xp = x.typed_data();
  const float* wp = packed.typed_data() + layer * P * K * kPanel;
  float* yp = y->typed_data();
  if (M == 0 || N == 0) return ffi::Error::Success();

  int64_t parts = pool.num_threads();
  const int64_t by_size = P * K * kPanel * static_cast<int64_t>(sizeof(float)) / kMinBytesPerThread;
  if (parts > by_size) parts = by_size;
  if (parts > P) parts = P;
  if (parts < 1) parts = 1;
  if (parts == 1) {
    RunPanels(xp, wp, yp, M, K, N, 0, P);
    return ffi::Error::Success();
  }
  // Shared with the pool's tasks, which may start after this call returned (and then find nothing to claim).
  struct Progress {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto progress = std::make_shared<Progress>();
  auto work = [=]() {
    int64_t part;
    while ((part = progress->next.fetch_add(1)) < parts) {
      RunPanels(xp, wp, yp, M, K, N, P * part / parts, P * (part + 1) / parts);
      progress->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t i = 1; i < parts; ++i) {
    auto task = work;
    pool.Schedule(std::move(task));
  }
  work();
  while (progress->done.load(std::memory_order_acquire) < parts) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#else
    std::this_thread::yield();
#endif
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MergPanelMatmul, PanelMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("layer"));
