// BCN's CPU kernels (bcn/kernels/cpu.py): BCN training forward and backward, BCN inference, and
// weight standardization.
//
// A contiguous (N, C, H, W) map is N*C planes of H*W values. Channel c's step-1 statistics
// involve only the planes (n, c), and group (n, g)'s statistics only the channels of g, so
// the planes {(n, c) : c in g} are a closed block forward and backward. Each task reads its
// block once for its sums, solves the block's coefficients in double, and writes its output
// while the block is still in cache: GroupNorm's memory traffic. Blocks of many samples with
// small planes (detection heads' ROI batches) run in memory order instead (in_memory_order).
// Tasks run on torch's intra-op threads; inside a task the order of operations is fixed, and
// every plane's sums and coefficients are computed the same way in both schedules, so results
// do not depend on the thread count.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <initializer_list>
#include <numeric>
#include <tuple>
#include <type_traits>
#include <vector>

// Sections: vector helpers; argument checks and reads; the coefficient algebra; BCN
// training; BCN inference; weight standardization; Python bindings.

namespace {

// ==============================================================================================
// Vector helpers: sums in lanes, streaming stores, plane moments
// ==============================================================================================

// Sums: vector lanes over blocks of at most kBlock values, blocks added in double. The block
// bound keeps float rounding to ~kBlock/lanes terms, whatever the plane size.
constexpr int64_t kBlock = 2048;
constexpr int64_t kMinWorkPerTask = 1 << 15;  // values; fewer per task costs more than it saves

// GCC/Clang vector extension: 64 bytes, which the compiler maps onto whatever SIMD width the
// build targets (4 SSE registers by default). Register accumulators, not arrays in memory:
// an array accumulator round-trips through the stack every iteration.
template <typename T>
struct Pack {
  typedef T type __attribute__((vector_size(64)));
  static constexpr int64_t width = 64 / sizeof(T);
};

template <typename V, typename T>
inline V load(const T* p) {
  if constexpr (std::is_same_v<V, T>) {
    return *p;
  } else {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
}

// Items per task for at::parallel_for, so that a task has at least kMinWorkPerTask values: a
// small map runs on the calling thread (waking the pool cost more than its whole work).
int64_t grain_for(int64_t values_per_item) {
  return std::max<int64_t>(1, kMinWorkPerTask / std::max<int64_t>(values_per_item, 1));
}

// The lanes of a vector summed pairwise: its halves added as vectors, down to two lanes
// (log2(lanes) vector adds). The halves are built from the lanes' values (not through an
// array or memcpy), so that they stay in registers as vectors.
template <typename T, typename V, size_t... Lane>
inline T lane_sum(const V& v, std::index_sequence<Lane...>) {
  constexpr size_t half = sizeof...(Lane);
  if constexpr (half == 1) {
    return v[0] + v[1];
  } else {
    typedef T Half __attribute__((vector_size(half * sizeof(T))));
    const Half sum = Half{v[Lane]...} + Half{v[Lane + half]...};
    return lane_sum<T>(sum, std::make_index_sequence<half / 2>());
  }
}

template <typename T, typename V>
inline T lane_sum(const V& v) {
  return lane_sum<T>(v, std::make_index_sequence<sizeof(V) / sizeof(T) / 2>());
}

// sum_i f(i) and sum_i h(i) over [0, n). term(i, f, h) adds f(i..) and h(i..) to f and h,
// for f, h either one scalar or one Pack of consecutive i (a generic lambda serves both).
// Forced inline, with moments_of: GCC kept them calls, and on a 4x4 plane (one Pack) a call per
// plane with its prologue and vzeroupper is a visible share of the work. (gradient_sums stays
// a call: inlined, it slows the backward on large maps.)
template <typename scalar_t, typename Term>
[[gnu::always_inline]] inline void two_sums(int64_t n, const Term& term, double& sum_f, double& sum_h) {
  using V = typename Pack<scalar_t>::type;
  constexpr int64_t width = Pack<scalar_t>::width;
  double total_f = 0.0, total_h = 0.0;
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t stop = std::min(n, start + kBlock);
    V vf = {}, vh = {};
    int64_t i = start;
    for (; i + width <= stop; i += width) term(i, vf, vh);
    scalar_t f = lane_sum<scalar_t>(vf), h = lane_sum<scalar_t>(vh);
    for (; i < stop; ++i) term(i, f, h);
    total_f += f;
    total_h += h;
  }
  sum_f = total_f;
  sum_h = total_h;
}

// out[i] = value(i) over [0, n) with non-temporal stores where the target has them: for outputs
// that are not read again soon (a weight's gradient waits for the optimizer), a normal store
// first reads each line it writes into the cache, a third stream of memory traffic besides the
// two read ones. value(i, zero) returns the value at i as the type of zero, scalar_t or Pack.
template <typename scalar_t, typename Value>
void write_streaming(scalar_t* out, int64_t n, const Value& value) {
  using V = typename Pack<scalar_t>::type;
  constexpr int64_t width = Pack<scalar_t>::width;
  int64_t i = 0;
#if defined(__SSE2__)
  constexpr int64_t kLine = 64;
  for (; i < n && reinterpret_cast<uintptr_t>(out + i) % kLine != 0; ++i) out[i] = value(i, scalar_t{});
  for (; i + width <= n; i += width) {
    const V v = value(i, V{});
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<scalar_t, float>) {
      _mm512_stream_ps(out + i, reinterpret_cast<const __m512&>(v));
    } else {
      _mm512_stream_pd(out + i, reinterpret_cast<const __m512d&>(v));
    }
#else
    for (int64_t part = 0; part < 4; ++part) {
      if constexpr (std::is_same_v<scalar_t, float>) {
        _mm_stream_ps(out + i + 4 * part, reinterpret_cast<const __m128*>(&v)[part]);
      } else {
        _mm_stream_pd(out + i + 2 * part, reinterpret_cast<const __m128d*>(&v)[part]);
      }
    }
#endif
  }
  _mm_sfence();  // streaming stores are weakly ordered: visible before the task ends
#endif
  for (; i < n; ++i) out[i] = value(i, scalar_t{});
}

// Mean and biased variance of one plane. Sums are taken around the plane's first value, so a
// large offset does not cancel catastrophically in var = E[(x-k)^2] - E[x-k]^2.
template <typename scalar_t>
[[gnu::always_inline]] inline void moments_of(const scalar_t* plane, int64_t size, double& mean, double& var) {
  const scalar_t shift = plane[0];
  double s1, s2;
  two_sums<scalar_t>(size, [&](int64_t i, auto& f, auto& h) {
    using V = std::decay_t<decltype(f)>;
    const V d = load<V>(plane + i) - shift;
    f += d;
    h += d * d;
  }, s1, s2);
  const double centre = s1 / size;
  mean = shift + centre;
  var = std::max(s2 / size - centre * centre, 0.0);
}

// sum_i g_i and sum_i g_i (x_i - centre): what every backward here needs of a row or plane.
template <typename scalar_t>
void gradient_sums(const scalar_t* g, const scalar_t* x, scalar_t centre, int64_t size,
                   double& sum_g, double& sum_gx) {
  two_sums<scalar_t>(size, [&](int64_t i, auto& f, auto& h) {
    using V = std::decay_t<decltype(f)>;
    const V gi = load<V>(g + i);
    f += gi;
    h += gi * (load<V>(x + i) - centre);
  }, sum_g, sum_gx);
}

// ==============================================================================================
// Argument checks and per-channel reads
// ==============================================================================================

void check_map(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "bcn cpu kernels: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.dim() == 4 && t.numel() > 0, "bcn cpu kernels: ", name,
              " must be a non-empty (N, C, H, W) map, got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "bcn cpu kernels: ", name, " must be contiguous (NCHW)");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "bcn cpu kernels: ", name, " must be float32 or float64, got ", t.scalar_type());
}

void check_grad_and_map(const at::Tensor& g, const at::Tensor& x) {
  check_map(g, "grad");
  check_map(x, "x");
  TORCH_CHECK(g.sizes() == x.sizes() && g.scalar_type() == x.scalar_type(),
              "bcn cpu kernels: grad and x differ in shape or dtype");
}

void check_groups(int64_t groups, int64_t channels) {
  TORCH_CHECK(groups > 0 && channels % groups == 0, "bcn cpu kernels: ", groups,
              " groups do not divide ", channels, " channels");
}

void check_coefficient(const at::Tensor& t, const at::Tensor& map, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == map.scalar_type() &&
                  t.numel() == map.size(0) * map.size(1),
              "bcn cpu kernels: ", name, " must be a contiguous (N, C) CPU tensor of the map's dtype");
}

void check_channels(std::initializer_list<const at::Tensor*> ts, const at::Tensor& x) {
  for (const at::Tensor* t : ts) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->numel() == x.size(1) &&
                    t->scalar_type() == x.scalar_type(),
                "bcn cpu kernels: per-channel tensors must be contiguous (C,) CPU tensors of the "
                "map's dtype");
  }
}

// BCN's step-2 affine: one value per group ((1, G, 1), the published layout) or per channel.
void check_affine(std::initializer_list<const at::Tensor*> ts, const at::Tensor& x, int64_t groups) {
  for (const at::Tensor* t : ts) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == x.scalar_type() &&
                    (t->numel() == groups || t->numel() == x.size(1)),
                "bcn cpu kernels: the group affine must be a contiguous CPU tensor of the map's dtype "
                "with one value per group or per channel");
  }
}

// Per-channel values computed over every process's batch: a contiguous (2, C) float64 CPU tensor.
void check_given(const at::Tensor& t, int64_t channels, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == at::kDouble &&
                  t.numel() == 2 * channels,
              "bcn cpu kernels: ", name, " must be a contiguous (2, C) float64 CPU tensor");
}

// A per-channel tensor as C doubles, read once per call (not once per task); a step-2 affine
// with one value per group is expanded to its channels.
template <typename scalar_t>
std::vector<double> per_channel(const at::Tensor& t, int64_t channels) {
  const scalar_t* p = t.const_data_ptr<scalar_t>();
  std::vector<double> out(channels);
  const int64_t values = t.numel(), repeat = channels / values;
  // No division per channel and no fill per channel where there is one value per channel: on
  // small maps with many channels those show. A plain loop converts 8 or 16 values per
  // instruction.
  if (repeat == 1) {
    for (int64_t k = 0; k < values; ++k) out[k] = static_cast<double>(p[k]);
  } else {
    for (int64_t k = 0; k < values; ++k) std::fill_n(out.data() + k * repeat, repeat, static_cast<double>(p[k]));
  }
  return out;
}

// ==============================================================================================
// The coefficient algebra: both steps as one affine map per plane
// ==============================================================================================

// A plane's output y = a (x - centre) + b, taken around a centre where its values are expected
// (the channel's step-1 mean): float rounding then stays relative to y, not to x. (As a x + b',
// a map far from zero loses to cancellation the digits its spread needs.)
template <typename scalar_t>
struct PlaneAffine {
  scalar_t a, centre, b;

  void write(const scalar_t* x, scalar_t* y, int64_t size) const {
    const scalar_t a_ = a, centre_ = centre, b_ = b;  // locals: y could alias *this
    for (int64_t i = 0; i < size; ++i) y[i] = a_ * (x[i] - centre_) + b_;
  }
};

// The (N, D) coefficient algebra of one group, in double. m, v: per-plane mean / biased
// variance, index n * D + j. Step 1 from `mean`, `var` (per channel of the group).
struct GroupAlgebra {
  int64_t n, d;
  double eps;
  std::vector<double> a, b;         // step 1 as an affine: a_j x + b_j        (D)
  std::vector<double> m1, mu, r;    // step-1 output's plane means; group mean, 1/std  (N*D, N, N)

  GroupAlgebra(int64_t n_, int64_t d_, double eps_) : n(n_), d(d_), eps(eps_), a(d_), b(d_),
      m1(n_ * d_), mu(n_), r(n_) {}

  // Step 1 as the affine a_j x + b_j, from its statistics and BatchNorm's affine.
  void step1(const double* mean, const double* var, const double* bn_w, const double* bn_b) {
    for (int64_t j = 0; j < d; ++j) {
      a[j] = bn_w[j] / std::sqrt(var[j] + eps);
      b[j] = bn_b[j] - a[j] * mean[j];
    }
  }

  // Sample s's group statistics: the mean and biased variance of its step-1 output.
  void group(int64_t s, double mean, double var) {
    mu[s] = mean;
    r[s] = 1.0 / std::sqrt(var + eps);
  }

  // Both steps from the planes' means m and biased variances v (index s * D + j).
  void solve(const double* m, const double* v, const double* mean, const double* var,
             const double* bn_w, const double* bn_b) {
    step1(mean, var, bn_w, bn_b);
    for (int64_t s = 0; s < n; ++s) {
      double sum = 0.0;
      for (int64_t j = 0; j < d; ++j) sum += (m1[s * d + j] = a[j] * m[s * d + j] + b[j]);
      const double mean_s = sum / d;
      double spread = 0.0;
      for (int64_t j = 0; j < d; ++j) {
        const double dm = m1[s * d + j] - mean_s;
        spread += a[j] * a[j] * v[s * d + j] + dm * dm;
      }
      group(s, mean_s, spread / d);
    }
  }

  // Plane (s, j)'s output gamma_j r (a_j x + b_j - mu) + beta_j, around centre_j.
  template <typename scalar_t>
  PlaneAffine<scalar_t> affine(int64_t s, int64_t j, double gamma_j, double beta_j,
                               double centre_j) const {
    const scalar_t centre = static_cast<scalar_t>(centre_j);
    const double scale = gamma_j * r[s], slope = scale * a[j];
    return {static_cast<scalar_t>(slope), centre,
            static_cast<scalar_t>(scale * (b[j] - mu[s]) + beta_j + slope * static_cast<double>(centre))};
  }

  // Sample s's D planes of the group, around their channels' centres.
  template <typename scalar_t>
  void write(int64_t s, const double* gamma, const double* beta, const double* centre,
             const scalar_t* in, scalar_t* out, int64_t size) const {
    for (int64_t j = 0; j < d; ++j) {
      affine<scalar_t>(s, j, gamma[j], beta[j], centre[j]).write(in + j * size, out + j * size, size);
    }
  }
};

// Step-1 statistics of the group's channels. Batch mode: the batch's mean and biased
// variance. Estimate mode (Algorithm 1): the estimates moved at `rate` towards the batch mean
// and the mean square around the OLD mean estimate.
void step1_statistics(int64_t n, int64_t d, const double* m, const double* v, bool estimate,
                      const double* old_mean, const double* old_var, double rate, double* mean,
                      double* var) {
  for (int64_t j = 0; j < d; ++j) {
    double batch_mean = 0.0;
    for (int64_t s = 0; s < n; ++s) batch_mean += m[s * d + j];
    batch_mean /= n;
    const double centre = estimate ? old_mean[j] : batch_mean;
    double spread = 0.0;
    for (int64_t s = 0; s < n; ++s) {
      const double dm = m[s * d + j] - centre;
      spread += v[s * d + j] + dm * dm;
    }
    spread /= n;
    mean[j] = estimate ? old_mean[j] + rate * (batch_mean - old_mean[j]) : batch_mean;
    var[j] = estimate ? old_var[j] + rate * (spread - old_var[j]) : spread;
  }
}

// ==============================================================================================
// BCN training: schedule, running state, forward, backward, autograd node
// ==============================================================================================

// The training kernels' schedule. One task per group reads its block (every sample's d planes)
// for the sums and writes it while in cache; but a block of many samples with small planes is
// many short strided chunks, and reading them costs more than a second pass over the map. Those
// run in memory order: the sums of every plane, then the groups' algebra, then the output.
// The thresholds: a chunk that fits an L1 data cache, in a block larger than it (ROI batches
// and small maps of many samples); larger chunks and single-sample maps stay per group.
constexpr int64_t kMaxChunkBytes = 28 << 10;   // one sample's planes of one group
constexpr int64_t kMinBlockBytes = 128 << 10;  // all samples' planes of one group

// The groups' algebra, for grain_for: ~tens of double operations per plane, counted as values.
constexpr int64_t kAlgebraCostPerPlane = 64;

bool in_memory_order(int64_t n, int64_t d, int64_t size, int64_t bytes) {
  const int64_t chunk = d * size * bytes;
  return chunk <= kMaxChunkBytes && n * chunk >= kMinBlockBytes;
}

// The training kernels' walk over a map, forward and backward alike: every plane's two sums,
// each group's algebra from its planes' sums, every plane's output from the coefficients the
// algebra gave it. Plane (s, g, j) is sample s's channel g * d + j; within a group, its sums
// and coefficients are at index s * d + j.
//   sums(plane, f, h)                      the plane's two sums
//   make_scratch()                         a task's working memory for solve
//   solve(g, f, h, scratch, coefficients)  group g's coefficients (a Coef per plane)
//   write(plane, coefficient)              the plane's output
// Either schedule above (in_memory_order) runs the same arithmetic per plane and per group, so
// results depend on neither the schedule nor the thread count.
template <typename Coef, typename Sums, typename MakeScratch, typename Solve, typename Write>
void sums_solve_write(int64_t n, int64_t groups, int64_t d, int64_t size, int64_t bytes,
                      const Sums& sums, const MakeScratch& make_scratch, const Solve& solve,
                      const Write& write) {
  const int64_t channels = groups * d;
  if (!in_memory_order(n, d, size, bytes)) {
    at::parallel_for(0, groups, grain_for(n * d * size), [&](int64_t begin, int64_t end) {
      auto scratch = make_scratch();
      std::vector<double> f(n * d), h(n * d);
      std::vector<Coef> coefficients(n * d);
      for (int64_t g = begin; g < end; ++g) {
        for (int64_t s = 0; s < n; ++s)
          for (int64_t j = 0; j < d; ++j) sums(s * channels + g * d + j, f[s * d + j], h[s * d + j]);
        solve(g, f.data(), h.data(), scratch, coefficients.data());
        for (int64_t s = 0; s < n; ++s)
          for (int64_t j = 0; j < d; ++j) write(s * channels + g * d + j, coefficients[s * d + j]);
      }
    });
    return;
  }
  // Rows of d planes (one sample's planes of one group) in memory order; group-major arrays,
  // plane (s, g, j) at g * n * d + s * d + j.
  std::vector<double> f(n * channels), h(n * channels);
  std::vector<Coef> coefficients(n * channels);
  const auto rows = [&](const auto& each_plane) {
    at::parallel_for(0, n * groups, grain_for(d * size), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t s = row / groups, g = row % groups, k = g * n * d + s * d;
        for (int64_t j = 0; j < d; ++j) each_plane(row * d + j, k + j);
      }
    });
  };
  rows([&](int64_t plane, int64_t k) { sums(plane, f[k], h[k]); });
  at::parallel_for(0, groups, grain_for(n * d * kAlgebraCostPerPlane), [&](int64_t begin, int64_t end) {
    auto scratch = make_scratch();
    for (int64_t g = begin; g < end; ++g) {
      const int64_t k = g * n * d;
      solve(g, &f[k], &h[k], scratch, &coefficients[k]);
    }
  });
  rows([&](int64_t plane, int64_t k) { write(plane, coefficients[k]); });
}

// Running state after a training batch, written only if finite (else counted as skipped):
// estimate mode -- the updated estimates themselves; batch mode -- BatchNorm's running
// averages at `momentum`, with the unbiased batch variance.
template <typename scalar_t>
void commit_running_state(bool estimate, double momentum, int64_t count, const scalar_t* mean,
                          const scalar_t* var, const at::Tensor& running_mean,
                          const at::Tensor& running_var, const at::Tensor& batches,
                          const at::Tensor& skipped) {
  const int64_t channels = running_mean.numel();
  scalar_t* rm = running_mean.mutable_data_ptr<scalar_t>();
  scalar_t* rv = running_var.mutable_data_ptr<scalar_t>();
  const double unbiased = count > 1 ? static_cast<double>(count) / (count - 1) : 1.0;
  std::vector<scalar_t> new_mean(channels), new_var(channels);
  bool finite = true;
  for (int64_t c = 0; c < channels; ++c) {
    new_mean[c] = estimate ? mean[c] : static_cast<scalar_t>((1 - momentum) * rm[c] + momentum * mean[c]);
    new_var[c] = estimate ? var[c]
                          : static_cast<scalar_t>((1 - momentum) * rv[c] + momentum * unbiased * var[c]);
    finite = finite && std::isfinite(static_cast<double>(new_mean[c])) &&
             std::isfinite(static_cast<double>(new_var[c]));
  }
  if (!finite) {
    skipped.mutable_data_ptr<int64_t>()[0] += 1;
    return;
  }
  std::copy(new_mean.begin(), new_mean.end(), rm);
  std::copy(new_var.begin(), new_var.end(), rv);
  batches.mutable_data_ptr<int64_t>()[0] += 1;
}

// Step 1's kinds, the codes bcn.kernels.arguments.STEP1_CODES gives them.
constexpr int64_t kBatch = 0, kEstimate = 1, kFixed = 2;

// BCN forward in training. step1 kBatch: step 1 with batch statistics; kEstimate: with the
// estimates (running_mean, running_var) moved at `rate` towards the batch first (Algorithm 1);
// kFixed: with the running state as it is (the estimate path at rate 0, never updated).
// update: then commit the running state (commit_running_state; `rate` is BatchNorm's momentum
// for kBatch). Returns y, per-plane mean and biased variance (N, C), and the step-1
// statistics used (C): the batch's biased statistics, or the (updated) estimates.
// batch_stats (synchronized batch statistics, train_forward_given): a (2, C) float64 tensor of
// step 1's mean and biased variance over every process's batch, and `values` their count;
// nullptr: the statistics of this batch.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> train_forward_impl(
    const at::Tensor& x, int64_t groups, const at::Tensor& bn_w, const at::Tensor& bn_b,
    const at::Tensor& gn_w, const at::Tensor& gn_b, const at::Tensor& running_mean,
    const at::Tensor& running_var, const at::Tensor& batches, const at::Tensor& skipped,
    int64_t step1, bool update, double rate, double eps, const at::Tensor* batch_stats,
    int64_t values) {
  TORCH_CHECK(step1 == kBatch || step1 == kEstimate || step1 == kFixed,
              "bcn cpu kernels: step1 must be 0 (batch), 1 (estimate) or 2 (fixed), got ", step1);
  const bool estimate = step1 != kBatch;
  if (step1 == kFixed) rate = 0.0, update = false;
  check_map(x, "x");
  check_channels({&running_mean, &running_var, &bn_w, &bn_b}, x);
  check_affine({&gn_w, &gn_b}, x, groups);
  for (const at::Tensor* t : {&batches, &skipped}) {
    TORCH_CHECK(t->device().is_cpu() && t->numel() == 1 && t->scalar_type() == at::kLong,
                "bcn cpu kernels: batch counters must be one-element int64 CPU tensors");
  }
  const int64_t n = x.size(0), channels = x.size(1), size = x.size(2) * x.size(3);
  check_groups(groups, channels);
  const double* given = nullptr;
  if (batch_stats != nullptr) {
    check_given(*batch_stats, channels, "batch statistics");
    given = batch_stats->const_data_ptr<double>();
  }
  const int64_t d = channels / groups;
  auto y = at::empty_like(x);
  auto plane_mean = at::empty({n, channels}, x.options()), plane_var = at::empty_like(plane_mean);
  auto mean = at::empty({channels}, x.options()), var = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "train_forward", [&] {
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    scalar_t* py = y.mutable_data_ptr<scalar_t>();
    scalar_t *pm = plane_mean.mutable_data_ptr<scalar_t>(), *pv = plane_var.mutable_data_ptr<scalar_t>();
    scalar_t *pmean = mean.mutable_data_ptr<scalar_t>(), *pvar = var.mutable_data_ptr<scalar_t>();
    const auto old_mean = per_channel<scalar_t>(running_mean, channels);
    const auto old_var = per_channel<scalar_t>(running_var, channels);
    const auto w = per_channel<scalar_t>(bn_w, channels), bb = per_channel<scalar_t>(bn_b, channels);
    const auto gam = per_channel<scalar_t>(gn_w, channels), bet = per_channel<scalar_t>(gn_b, channels);
    // Group g from its planes' moments m, v: the step-1 statistics, and each plane's output
    // around its channel's step-1 mean.
    struct Scratch {
      GroupAlgebra alg;
      std::vector<double> mean, var;  // step 1's, of the group's channels
    };
    const auto solve_group = [&](int64_t g, const double* m, const double* v, Scratch& t,
                                 PlaneAffine<scalar_t>* affine) {
      const int64_t c0 = g * d;
      if (given) {
        std::copy_n(given + c0, d, t.mean.data());
        std::copy_n(given + channels + c0, d, t.var.data());
      } else {
        step1_statistics(n, d, m, v, estimate, &old_mean[c0], &old_var[c0], rate, t.mean.data(), t.var.data());
      }
      t.alg.solve(m, v, t.mean.data(), t.var.data(), &w[c0], &bb[c0]);
      for (int64_t s = 0; s < n; ++s) {
        for (int64_t j = 0; j < d; ++j) {
          const int64_t k = s * d + j, plane = s * channels + c0 + j;
          affine[k] = t.alg.affine<scalar_t>(s, j, gam[c0 + j], bet[c0 + j], t.mean[j]);
          pm[plane] = static_cast<scalar_t>(m[k]);
          pv[plane] = static_cast<scalar_t>(v[k]);
        }
      }
      for (int64_t j = 0; j < d; ++j) {
        pmean[c0 + j] = static_cast<scalar_t>(t.mean[j]);
        pvar[c0 + j] = static_cast<scalar_t>(t.var[j]);
      }
    };
    sums_solve_write<PlaneAffine<scalar_t>>(
        n, groups, d, size, sizeof(scalar_t),
        [&](int64_t plane, double& m, double& v) { moments_of(px + plane * size, size, m, v); },
        [&] { return Scratch{GroupAlgebra(n, d, eps), std::vector<double>(d), std::vector<double>(d)}; },
        solve_group,
        [&](int64_t plane, const PlaneAffine<scalar_t>& affine) {
          affine.write(px + plane * size, py + plane * size, size);
        });
    if (update) {
      commit_running_state<scalar_t>(estimate, rate, given ? values : n * size, pmean, pvar,
                                     running_mean, running_var, batches, skipped);
    }
  });
  return {y, plane_mean, plane_var, mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> train_forward(
    const at::Tensor& x, int64_t groups, const at::Tensor& bn_w, const at::Tensor& bn_b,
    const at::Tensor& gn_w, const at::Tensor& gn_b, const at::Tensor& running_mean,
    const at::Tensor& running_var, const at::Tensor& batches, const at::Tensor& skipped,
    int64_t step1, bool update, double rate, double eps) {
  RECORD_FUNCTION("bcn::train_forward", std::vector<c10::IValue>());
  return train_forward_impl(x, groups, bn_w, bn_b, gn_w, gn_b, running_mean, running_var,
                            batches, skipped, step1, update, rate, eps, nullptr, 0);
}

// Step 1 with batch statistics given (synchronized across processes: `batch_stats` (2, C),
// float64, over `values` values per channel); the running averages move at `momentum`.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> train_forward_given(
    const at::Tensor& x, int64_t groups, const at::Tensor& bn_w, const at::Tensor& bn_b,
    const at::Tensor& gn_w, const at::Tensor& gn_b, const at::Tensor& running_mean,
    const at::Tensor& running_var, const at::Tensor& batches, const at::Tensor& skipped,
    bool update, double momentum, double eps, const at::Tensor& batch_stats, int64_t values) {
  RECORD_FUNCTION("bcn::train_forward_given", std::vector<c10::IValue>());
  return train_forward_impl(x, groups, bn_w, bn_b, gn_w, gn_b, running_mean, running_var,
                            batches, skipped, kBatch, update, momentum, eps, &batch_stats, values);
}

// Mean and biased variance of every plane, (N, C) float64 each: what a process contributes to
// synchronized batch statistics.
std::tuple<at::Tensor, at::Tensor> plane_moments(const at::Tensor& x) {
  RECORD_FUNCTION("bcn::plane_moments", std::vector<c10::IValue>());
  check_map(x, "x");
  const int64_t planes = x.size(0) * x.size(1), size = x.size(2) * x.size(3);
  auto mean = at::empty({x.size(0), x.size(1)}, x.options().dtype(at::kDouble));
  auto var = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "plane_moments", [&] {
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    double *pm = mean.mutable_data_ptr<double>(), *pv = var.mutable_data_ptr<double>();
    at::parallel_for(0, planes, grain_for(size), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) moments_of(px + p * size, size, pm[p], pv[p]);
    });
  });
  return {mean, var};
}

// Gradients of train_forward. Step 1's statistics (mean, var) are differentiated through in
// batch mode and constants in estimate mode (Algorithm 1). With z the group-normalized step-1
// output and x1 = a x + b:
//   dL/dx1 = r (gamma g - <gamma g>_{n,g} - z <gamma g z>_{n,g})              (GroupNorm)
//   dL/dx  = a (dx1 - <dx1>_c - (x - mean) <dx1 (x - mean)>_c / (var + eps))  (BatchNorm)
// and every average is a combination of the per-plane sums of g and g (x - m). So dx is
// p g + q x + k per plane. Returns dx and the gradients of bn_w, bn_b, gn_w, gn_b.
// Synchronized batch statistics: `given_sums` (2, C) float64, sum dx1 and sum dx1 (x - mean) over
// every process's `given_values` values per channel, replace this batch's in BatchNorm's terms;
// `local_sums` (2, C) float64, if not null, receives this batch's. Without `write_dx` only
// those sums are computed (dx is left empty).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> train_backward_impl(
    const at::Tensor& grad, const at::Tensor& x, int64_t groups, const at::Tensor& bn_w,
    const at::Tensor& bn_b, const at::Tensor& gn_w, const at::Tensor& plane_mean,
    const at::Tensor& plane_var, const at::Tensor& mean, const at::Tensor& var, int64_t step1,
    double eps, const at::Tensor* given_sums, double given_values, at::Tensor* local_sums,
    bool write_dx) {
  const bool estimate = step1 != kBatch;
  check_grad_and_map(grad, x);
  check_coefficient(plane_mean, x, "plane_mean");
  check_coefficient(plane_var, x, "plane_var");
  check_channels({&mean, &var, &bn_w, &bn_b}, x);
  check_affine({&gn_w}, x, groups);
  const int64_t n = x.size(0), channels = x.size(1), size = x.size(2) * x.size(3);
  check_groups(groups, channels);
  const int64_t d = channels / groups;
  const bool per_group = gn_w.numel() != channels;
  const double* given = nullptr;
  if (given_sums != nullptr) {
    check_given(*given_sums, channels, "gradient sums");
    given = given_sums->const_data_ptr<double>();
  }
  double* local_out = local_sums != nullptr ? local_sums->mutable_data_ptr<double>() : nullptr;
  auto dx = at::empty_like(x);
  auto d_bn_w = at::empty({channels}, x.options()), d_bn_b = at::empty_like(d_bn_w);
  auto d_gn_w = at::empty_like(gn_w), d_gn_b = at::empty_like(gn_w);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "train_backward", [&] {
    const scalar_t* pg = grad.const_data_ptr<scalar_t>();
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    scalar_t* pd = dx.mutable_data_ptr<scalar_t>();
    const scalar_t *pm = plane_mean.const_data_ptr<scalar_t>(), *pv = plane_var.const_data_ptr<scalar_t>();
    scalar_t *pdw = d_bn_w.mutable_data_ptr<scalar_t>(), *pdb = d_bn_b.mutable_data_ptr<scalar_t>();
    scalar_t *pdgamma = d_gn_w.mutable_data_ptr<scalar_t>(), *pdbeta = d_gn_b.mutable_data_ptr<scalar_t>();
    const auto mean_c = per_channel<scalar_t>(mean, channels), var_c = per_channel<scalar_t>(var, channels);
    const auto w = per_channel<scalar_t>(bn_w, channels), bb = per_channel<scalar_t>(bn_b, channels);
    const auto gam_c = per_channel<scalar_t>(gn_w, channels);
    // Group `group` from its planes' gradient sums. Per plane k = (sample s, channel j) of the
    // group, with g = dL/dy, m_k its mean, x1 = a_j x + b_j (step 1), z = r_s (x1 - mu_s) and
    // y = gamma_j z + beta_j (step 2), over the plane's L values:
    //   sum_g[k] = sum g,   sum_gx[k] = sum g (x - m_k),
    //   sum_gz[k] = sum g z = r_s (a_j sum_gx[k] + (m1_k - mu_s) sum_g[k]);
    // step 2 backward, with mean_gamma_g = sum_j gamma_j sum_g / (D L), mean_gamma_gz likewise:
    //   dx1 = p1 g + q1 x + k1,  p1 = r_s gamma_j,  q1 = -r_s^2 mean_gamma_gz a_j,
    //   k1 = -r_s mean_gamma_g - r_s^2 mean_gamma_gz (m1_k - mu_s - a_j m_k);
    // step 1 backward (batch mode: through the batch statistics, over the channel's N L values,
    // sum_dx1 = sum dx1 and sum_dx1x = sum dx1 (x - step1_mean_j); estimate mode: constants):
    //   dx = a_j (dx1 - sum_dx1 / (N L) - (x - step1_mean_j) sum_dx1x / ((var_j + eps) N L)),
    // applied as dx = P g + Q (x - step1_mean_j) + K; and the parameters' gradients.
    struct Gradient { scalar_t P, Q, K; };
    struct Scratch {
      std::vector<double> m, v, sum_gz, p1, q1, k1, dgamma, dbeta, sum_dx1, sum_dx1x;
      GroupAlgebra alg;
      Scratch(int64_t n, int64_t d, double eps) : m(n * d), v(n * d), sum_gz(n * d), p1(n * d),
          q1(n * d), k1(n * d), dgamma(d), dbeta(d), sum_dx1(d), sum_dx1x(d), alg(n, d, eps) {}
    };
    const auto solve_group = [&](int64_t group, const double* sum_g, const double* sum_gx, Scratch& t,
                                 Gradient* gradient) {
      const int64_t c0 = group * d;
      const double len = static_cast<double>(size);
      auto &m = t.m, &v = t.v, &sum_gz = t.sum_gz, &p1 = t.p1, &q1 = t.q1, &k1 = t.k1;
      auto &dgamma = t.dgamma, &dbeta = t.dbeta, &sum_dx1 = t.sum_dx1, &sum_dx1x = t.sum_dx1x;
      auto& alg = t.alg;
      for (int64_t s = 0; s < n; ++s) {
        for (int64_t j = 0; j < d; ++j) {
          m[s * d + j] = pm[s * channels + c0 + j];
          v[s * d + j] = pv[s * channels + c0 + j];
        }
      }
      const double *step1_mean = &mean_c[c0], *step1_var = &var_c[c0], *gam = &gam_c[c0];
      alg.solve(m.data(), v.data(), step1_mean, step1_var, &w[c0], &bb[c0]);
      for (auto* acc : {&dgamma, &dbeta, &sum_dx1, &sum_dx1x}) std::fill(acc->begin(), acc->end(), 0.0);
      for (int64_t s = 0; s < n; ++s) {  // GroupNorm part: dx1 = p1 g + q1 x + k1 per plane
        const double r = alg.r[s];
        double mean_gamma_g = 0.0, mean_gamma_gz = 0.0;
        for (int64_t j = 0; j < d; ++j) {
          const int64_t k = s * d + j;
          sum_gz[k] = r * (alg.a[j] * sum_gx[k] + (alg.m1[k] - alg.mu[s]) * sum_g[k]);  // sum g z
          mean_gamma_g += gam[j] * sum_g[k];
          mean_gamma_gz += gam[j] * sum_gz[k];
          dgamma[j] += sum_gz[k];
          dbeta[j] += sum_g[k];
        }
        mean_gamma_g /= d * len;
        mean_gamma_gz /= d * len;
        for (int64_t j = 0; j < d; ++j) {
          const int64_t k = s * d + j;
          p1[k] = r * gam[j];
          q1[k] = -r * r * mean_gamma_gz * alg.a[j];
          k1[k] = -r * mean_gamma_g - r * r * mean_gamma_gz * (alg.m1[k] - alg.mu[s] - alg.a[j] * m[k]);
          // sums over the plane of dx1 and of dx1 (x - mean_j)
          const double dm = m[k] - step1_mean[j];
          sum_dx1[j] += p1[k] * sum_g[k] + q1[k] * len * m[k] + k1[k] * len;
          sum_dx1x[j] += p1[k] * (sum_gx[k] + dm * sum_g[k]) + q1[k] * len * (v[k] + m[k] * dm) +
                     k1[k] * len * dm;
        }
      }
      for (int64_t j = 0; j < d; ++j) {  // BatchNorm part
        const double inv_var = 1.0 / (step1_var[j] + eps), count = given ? given_values : n * len;
        const double all_dx1 = given ? given[c0 + j] : sum_dx1[j];
        const double all_dx1x = given ? given[channels + c0 + j] : sum_dx1x[j];
        if (local_out != nullptr) {
          local_out[c0 + j] = sum_dx1[j];
          local_out[channels + c0 + j] = sum_dx1x[j];
        }
        const double drop_mean = estimate ? 0.0 : all_dx1 / count;
        const double drop_x = estimate ? 0.0 : all_dx1x * inv_var / count;
        const double aj = alg.a[j];
        // dx = P g + Q x + K, evaluated around the channel's mean: the two normalizations
        // make dx small next to Q x and K where the gradient cancels (few values per
        // channel), and Q (x - centre) keeps float rounding relative to dx, not to x.
        const scalar_t centre = static_cast<scalar_t>(step1_mean[j]);
        for (int64_t s = 0; s < n; ++s) {
          const int64_t k = s * d + j;
          const double q = aj * (q1[k] - drop_x);
          gradient[k] = {static_cast<scalar_t>(aj * p1[k]), static_cast<scalar_t>(q),
                         static_cast<scalar_t>(aj * (k1[k] - drop_mean + step1_mean[j] * drop_x) +
                                               q * static_cast<double>(centre))};
        }
        pdw[c0 + j] = static_cast<scalar_t>(sum_dx1x[j] * std::sqrt(inv_var));
        pdb[c0 + j] = static_cast<scalar_t>(sum_dx1[j]);
        if (!per_group) {
          pdgamma[c0 + j] = static_cast<scalar_t>(dgamma[j]);
          pdbeta[c0 + j] = static_cast<scalar_t>(dbeta[j]);
        }
      }
      if (per_group) {
        pdgamma[group] = static_cast<scalar_t>(std::accumulate(dgamma.begin(), dgamma.end(), 0.0));
        pdbeta[group] = static_cast<scalar_t>(std::accumulate(dbeta.begin(), dbeta.end(), 0.0));
      }
    };
    const auto sums = [&](int64_t plane, double& sum_g, double& sum_gx) {
      gradient_sums(pg + plane * size, px + plane * size, pm[plane], size, sum_g, sum_gx);
    };
    const auto make_scratch = [&] { return Scratch(n, d, eps); };
    if (!write_dx) {
      sums_solve_write<Gradient>(n, groups, d, size, sizeof(scalar_t), sums, make_scratch,
                                 solve_group, [](int64_t, Gradient) {});
      return;
    }
    sums_solve_write<Gradient>(
        n, groups, d, size, sizeof(scalar_t), sums, make_scratch, solve_group,
        [&](int64_t plane, Gradient gradient) {  // by value: no reload per store for possible aliasing
          const auto [P, Q, K] = gradient;
          const scalar_t* gp = pg + plane * size;
          const scalar_t* xp = px + plane * size;
          const scalar_t centre = static_cast<scalar_t>(mean_c[plane % channels]);
          scalar_t* out = pd + plane * size;
          for (int64_t i = 0; i < size; ++i) out[i] = P * gp[i] + Q * (xp[i] - centre) + K;
        });
  });
  return {dx, d_bn_w, d_bn_b, d_gn_w, d_gn_b};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> train_backward(
    const at::Tensor& grad, const at::Tensor& x, int64_t groups, const at::Tensor& bn_w,
    const at::Tensor& bn_b, const at::Tensor& gn_w, const at::Tensor& plane_mean,
    const at::Tensor& plane_var, const at::Tensor& mean, const at::Tensor& var, int64_t step1,
    double eps) {
  RECORD_FUNCTION("bcn::train_backward", std::vector<c10::IValue>());
  return train_backward_impl(grad, x, groups, bn_w, bn_b, gn_w, plane_mean, plane_var, mean, var,
                             step1, eps, nullptr, 0.0, nullptr, true);
}

// This batch's sum dx1 and sum dx1 (x - mean) per channel, (2, C) float64 (step 1 "batch"):
// what a process contributes to a synchronized backward.
at::Tensor train_backward_sums(const at::Tensor& grad, const at::Tensor& x, int64_t groups,
                               const at::Tensor& bn_w, const at::Tensor& bn_b,
                               const at::Tensor& gn_w, const at::Tensor& plane_mean,
                               const at::Tensor& plane_var, const at::Tensor& mean,
                               const at::Tensor& var, double eps) {
  RECORD_FUNCTION("bcn::train_backward_sums", std::vector<c10::IValue>());
  auto local = at::empty({2, x.size(1)}, x.options().dtype(at::kDouble));
  train_backward_impl(grad, x, groups, bn_w, bn_b, gn_w, plane_mean, plane_var, mean, var, kBatch,
                      eps, nullptr, 0.0, &local, false);
  return local;
}

// The backward with BatchNorm's sums over every process's batch (`sums` (2, C) float64 over
// `values` values per channel); the parameters' gradients stay this batch's own.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> train_backward_given(
    const at::Tensor& grad, const at::Tensor& x, int64_t groups, const at::Tensor& bn_w,
    const at::Tensor& bn_b, const at::Tensor& gn_w, const at::Tensor& plane_mean,
    const at::Tensor& plane_var, const at::Tensor& mean, const at::Tensor& var, double eps,
    const at::Tensor& sums, double values) {
  RECORD_FUNCTION("bcn::train_backward_given", std::vector<c10::IValue>());
  return train_backward_impl(grad, x, groups, bn_w, bn_b, gn_w, plane_mean, plane_var, mean, var,
                             kBatch, eps, &sums, values, nullptr, true);
}

// The kernels' gradients are not themselves differentiable (Python's once_differentiable): a
// backward that records a graph (create_graph=True) would get silently wrong higher orders.
void check_once_differentiable(const char* what, const char* way_out) {
  TORCH_CHECK(!torch::autograd::GradMode::is_enabled(), what, " have no double backward (backward "
              "with create_graph=True); ", way_out, " for higher-order gradients");
}

// train_forward / train_backward as one autograd node, in C++: as a Python autograd.Function
// the node's own overhead (GIL, saved-tensor unpacking) would be as large as GroupNorm's whole
// cost on the small maps of detection heads and res5.
struct TrainingBatchChannelNorm : public torch::autograd::Function<TrainingBatchChannelNorm> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            int64_t groups, const at::Tensor& bn_w, const at::Tensor& bn_b,
                            const at::Tensor& gn_w, const at::Tensor& gn_b,
                            const at::Tensor& running_mean, const at::Tensor& running_var,
                            const at::Tensor& batches, const at::Tensor& skipped, int64_t step1,
                            bool update, double rate, double eps) {
    const auto map = x.contiguous();
    auto [y, plane_mean, plane_var, mean, var] =
        train_forward(map, groups, bn_w, bn_b, gn_w, gn_b, running_mean, running_var, batches,
                      skipped, step1, update, rate, eps);
    ctx->save_for_backward({map, bn_w, bn_b, gn_w, plane_mean, plane_var, mean, var});
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["step1"] = step1;
    ctx->saved_data["eps"] = eps;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    check_once_differentiable("BCN's fused kernels", "build the layer with impl='reference'");
    const auto saved = ctx->get_saved_variables();
    auto [dx, d_bn_w, d_bn_b, d_gn_w, d_gn_b] = train_backward(
        grads[0].contiguous(), saved[0], ctx->saved_data["groups"].toInt(), saved[1], saved[2],
        saved[3], saved[4], saved[5], saved[6], saved[7], ctx->saved_data["step1"].toInt(),
        ctx->saved_data["eps"].toDouble());
    const at::Tensor none;  // for the arguments that are not differentiable
    // (d_gn_w, d_gn_b have gn_w's shape: the kernels take the affine in any contiguous shape)
    return {dx, none, d_bn_w, d_bn_b, d_gn_w, d_gn_b, none, none, none, none, none, none, none, none};
  }
};

at::Tensor train(const at::Tensor& x, int64_t groups, const at::Tensor& bn_w,
                 const at::Tensor& bn_b, const at::Tensor& gn_w, const at::Tensor& gn_b,
                 const at::Tensor& running_mean, const at::Tensor& running_var,
                 const at::Tensor& batches, const at::Tensor& skipped, int64_t step1, bool update,
                 double rate, double eps) {
  return TrainingBatchChannelNorm::apply(x, groups, bn_w, bn_b, gn_w, gn_b, running_mean,
                                         running_var, batches, skipped, step1, update, rate, eps);
}


// ==============================================================================================
// BCN inference: step 1 fixed, one task per (sample, group)
// ==============================================================================================

// Mean and biased variance of a group's step-1 output a_j x + b_j over its d planes of `size`
// values, in one pass with one pair of accumulators for the whole group. Step 1 is fixed in eval,
// so no plane needs sums of its own (per-plane sums and their lane reductions would dominate
// on small maps). Values are taken as a_j (x - c_j) + (b_j +
// a_j c_j - shift), c_j = `centre[j]` (the channel's running mean, where the channel's values
// are expected), so float rounding stays relative to the normalized value, not to x; shift =
// the group's first output value, as in moments_of. Float lanes, flushed to double every
// kFlush values or more (per kBlock, the error of maps with many small planes grows).
constexpr int64_t kFlush = 256;

template <typename scalar_t>
void step1_output_moments(const scalar_t* block, int64_t d, int64_t size, const double* a,
                          const double* b, const double* centre, double& mean, double& var) {
  using V = typename Pack<scalar_t>::type;
  constexpr int64_t width = Pack<scalar_t>::width;
  const double shift = a[0] * block[0] + b[0];
  double total_f = 0.0, total_h = 0.0;
  V vf = {}, vh = {};
  // Values after a plane's last full Pack, in double: planes smaller than a Pack (5x3) send every
  // value here, and a float sum of 256+ values in one chain lost digits (eval error up to 3.5e-6).
  double f = 0, h = 0;
  int64_t pending = 0;
  const auto flush = [&] {
    total_f += static_cast<double>(lane_sum<scalar_t>(vf)) + f;
    total_h += static_cast<double>(lane_sum<scalar_t>(vh)) + h;
    vf = V{}, vh = V{}, f = 0, h = 0, pending = 0;
  };
  for (int64_t j = 0; j < d; ++j) {
    const scalar_t c = static_cast<scalar_t>(centre[j]), A = static_cast<scalar_t>(a[j]);
    const scalar_t B = static_cast<scalar_t>(b[j] + a[j] * static_cast<double>(c) - shift);
    const scalar_t* x = block + j * size;
    for (int64_t start = 0; start < size; start += kBlock) {
      const int64_t stop = std::min(size, start + kBlock);
      int64_t i = start;
      for (; i + width <= stop; i += width) {
        const V u = A * (load<V>(x + i) - c) + B;
        vf += u;
        vh += u * u;
      }
      for (; i < stop; ++i) {
        const scalar_t u = A * (x[i] - c) + B;
        f += u;
        h += u * u;
      }
      pending += stop - start;
      if (pending >= kFlush) flush();
    }
  }
  flush();
  const double count = static_cast<double>(d * size), offset = total_f / count;
  mean = shift + offset;
  var = std::max(total_h / count - offset * offset, 0.0);
}

// Step 1 fixed (eval): one task per (sample, group) -- the unit GroupNorm itself uses.
at::Tensor inference_forward(const at::Tensor& x, int64_t groups, const at::Tensor& bn_w,
                             const at::Tensor& bn_b, const at::Tensor& gn_w,
                             const at::Tensor& gn_b, const at::Tensor& mean,
                             const at::Tensor& var, double eps) {
  RECORD_FUNCTION("bcn::inference_forward", std::vector<c10::IValue>());  // each kernel named in torch.profiler
  check_map(x, "x");
  check_channels({&mean, &var, &bn_w, &bn_b}, x);
  check_affine({&gn_w, &gn_b}, x, groups);
  const int64_t n = x.size(0), channels = x.size(1), size = x.size(2) * x.size(3);
  check_groups(groups, channels);
  const int64_t d = channels / groups;
  auto y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "inference_forward", [&] {
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    scalar_t* py = y.mutable_data_ptr<scalar_t>();
    const auto mean_c = per_channel<scalar_t>(mean, channels), var_c = per_channel<scalar_t>(var, channels);
    const auto w = per_channel<scalar_t>(bn_w, channels), bb = per_channel<scalar_t>(bn_b, channels);
    const auto gam = per_channel<scalar_t>(gn_w, channels), bet = per_channel<scalar_t>(gn_b, channels);
    at::parallel_for(0, n * groups, grain_for(d * size), [&](int64_t begin, int64_t end) {
      GroupAlgebra alg(1, d, eps);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t s = task / groups, c0 = (task % groups) * d;
        const scalar_t* block = px + (s * channels + c0) * size;
        alg.step1(&mean_c[c0], &var_c[c0], &w[c0], &bb[c0]);
        double group_mean, group_var;
        step1_output_moments(block, d, size, alg.a.data(), alg.b.data(), &mean_c[c0], group_mean, group_var);
        alg.group(0, group_mean, group_var);
        alg.write(0, &gam[c0], &bet[c0], &mean_c[c0], block, py + (s * channels + c0) * size, size);
      }
    });
  });
  return y;
}

// ==============================================================================================
// Weight standardization
// ==============================================================================================

// Weight standardization (the paper's Eq. 9, the published form): each output channel's row w of
// k values becomes z = (w - m) s, s = 1 / sqrt(var + eps), var unbiased. One task per block of
// rows, each row read for its moments and written while in cache: a copy's memory traffic
// (tools/benchmark_ws.py compares it with a clone and with the reference path). Rows are
// taken around their rounded mean, so a row far from zero keeps its digits. The gradient is
// written with streaming stores (it waits for the optimizer, not read again soon); the
// forward's z is not: the convolution reads it next, while it is still in the cache.
// Backward: dL/dw = s (g - mean(g)) - s^3 / (k - 1) (w - m) sum_j g_j (w_j - m).
std::tuple<at::Tensor, at::Tensor, at::Tensor> standardize_weight_forward(const at::Tensor& weight, double eps) {
  RECORD_FUNCTION("bcn::standardize_weight_forward", std::vector<c10::IValue>());
  TORCH_CHECK(weight.device().is_cpu() && weight.is_contiguous() &&
                  (weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kDouble),
              "bcn cpu kernels: the weight must be a contiguous float32/float64 CPU tensor");
  const int64_t rows = weight.size(0), k = weight.numel() / std::max<int64_t>(rows, 1);
  TORCH_CHECK(weight.dim() >= 2 && k > 1, "bcn cpu kernels: weight standardization needs more "
              "than one value per output channel, got shape ", weight.sizes());
  auto z = at::empty_like(weight);
  auto row_mean = at::empty({rows}, weight.options().dtype(at::kDouble));
  auto row_scale = at::empty_like(row_mean);
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "standardize_weight_forward", [&] {
    const scalar_t* pw = weight.const_data_ptr<scalar_t>();
    scalar_t* pz = z.mutable_data_ptr<scalar_t>();
    double *pm = row_mean.mutable_data_ptr<double>(), *ps = row_scale.mutable_data_ptr<double>();
    at::parallel_for(0, rows, grain_for(k), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* w = pw + r * k;
        double mean, var;
        moments_of(w, k, mean, var);
        const double scale = 1.0 / std::sqrt(var * k / (k - 1) + eps);
        pm[r] = mean;
        ps[r] = scale;
        // z = (w - centre) s + (centre - mean) s, centre = the mean rounded to scalar_t
        const scalar_t centre = static_cast<scalar_t>(mean), A = static_cast<scalar_t>(scale);
        const scalar_t B = static_cast<scalar_t>((centre - mean) * scale);
        scalar_t* out = pz + r * k;
        for (int64_t i = 0; i < k; ++i) out[i] = A * (w[i] - centre) + B;
      }
    });
  });
  return {z, row_mean, row_scale};
}

at::Tensor standardize_weight_backward(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& row_mean,
                       const at::Tensor& row_scale) {
  RECORD_FUNCTION("bcn::standardize_weight_backward", std::vector<c10::IValue>());
  TORCH_CHECK(grad.sizes() == weight.sizes() && grad.scalar_type() == weight.scalar_type() &&
                  grad.is_contiguous() && weight.is_contiguous(),
              "bcn cpu kernels: grad and weight differ in shape or dtype, or are not contiguous");
  const int64_t rows = weight.size(0), k = weight.numel() / std::max<int64_t>(rows, 1);
  for (const at::Tensor* t : {&row_mean, &row_scale}) {
    TORCH_CHECK(t->scalar_type() == at::kDouble && t->is_contiguous() && t->numel() == rows,
                "bcn cpu kernels: row statistics must be standardize_weight_forward's (rows,) float64 tensors");
  }
  auto dw = at::empty_like(weight);
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "standardize_weight_backward", [&] {
    const scalar_t *pg = grad.const_data_ptr<scalar_t>(), *pw = weight.const_data_ptr<scalar_t>();
    scalar_t* pd = dw.mutable_data_ptr<scalar_t>();
    const double *pm = row_mean.const_data_ptr<double>(), *ps = row_scale.const_data_ptr<double>();
    at::parallel_for(0, rows, grain_for(k), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t *g = pg + r * k, *w = pw + r * k;
        const scalar_t centre = static_cast<scalar_t>(pm[r]);
        double sum_g, sum_gw;
        gradient_sums(g, w, centre, k, sum_g, sum_gw);
        const double s = ps[r], offset = pm[r] - centre;
        // sum_j g_j (w_j - mean) = sum_gw - sum_g offset
        const double q = -s * s * s * (sum_gw - sum_g * offset) / (k - 1);
        // dw = s g - s mean(g) + q (w - mean) = P g + Q (w - centre) + R
        const scalar_t P = static_cast<scalar_t>(s), Q = static_cast<scalar_t>(q);
        const scalar_t R = static_cast<scalar_t>(-s * sum_g / k - q * offset);
        scalar_t* out = pd + r * k;
        write_streaming(out, k, [&](int64_t i, auto zero) {
          using T = decltype(zero);
          return P * load<T>(g + i) + Q * (load<T>(w + i) - centre) + R;
        });
      }
    });
  });
  return dw;
}

struct WeightStandardization : public torch::autograd::Function<WeightStandardization> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& weight,
                            double eps) {
    const auto w = weight.contiguous();
    auto [z, row_mean, row_scale] = standardize_weight_forward(w, eps);
    ctx->save_for_backward({w, row_mean, row_scale});
    return z;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    check_once_differentiable("BCN's weight-standardization kernels", "set BCN_KERNELS=0");
    const auto saved = ctx->get_saved_variables();
    return {standardize_weight_backward(grads[0].contiguous(), saved[0], saved[1], saved[2]), at::Tensor()};
  }
};

at::Tensor standardize_weight(const at::Tensor& weight, double eps) {
  return WeightStandardization::apply(weight, eps);
}


}  // namespace

// ==============================================================================================
// Python bindings
// ==============================================================================================

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("inference_forward", &inference_forward, "BCN forward with step 1 fixed, one task per (sample, group)");
  m.def("train_forward", &train_forward, "BCN forward in training, one task per group");
  m.def("train_backward", &train_backward, "BCN backward, one task per group");
  m.def("plane_moments", &plane_moments, "every plane's mean and biased variance, float64");
  m.def("train_forward_given", &train_forward_given,
        "BCN forward in training with step 1's batch statistics given (synchronized)");
  m.def("train_backward_sums", &train_backward_sums,
        "this batch's sums of BatchNorm's backward, (2, C) float64 (synchronized)");
  m.def("train_backward_given", &train_backward_given,
        "BCN backward with BatchNorm's sums over every process's batch (synchronized)");
  m.def("standardize_weight", &standardize_weight,
        "(W - mean) / sqrt(var_unbiased + eps) per output channel, as an autograd node");
  m.def("standardize_weight_forward", &standardize_weight_forward, "weight standardization: (z, row mean, row scale)");
  m.def("standardize_weight_backward", &standardize_weight_backward, "gradient of standardize_weight_forward");
  m.def("runs_in_memory_order", [](const at::Tensor& x, int64_t groups) {
    return in_memory_order(x.size(0), x.size(1) / groups, x.size(2) * x.size(3), x.element_size());
  }, "whether the training kernels take this map in memory order instead of one task per group");
  m.def("train", &train, "BCN in training as an autograd node: train_forward, then train_backward");
}
