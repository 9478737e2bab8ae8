// The four passes over a feature map that BCN needs (bcn/fused.py), for CPU tensors.
//
// A contiguous (N, C, H, W) map is N*C planes of H*W values; every pass works plane by plane
// and everything BCN couples across planes (batch statistics, groups) lives in (N, C)
// coefficients computed outside. Planes run in parallel on torch's intra-op threads; inside
// a plane the order of operations is fixed, so results do not depend on the thread count.
//
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

// Sums: vector lanes over blocks of at most kBlock values, blocks added in double. The block
// bound keeps float rounding to ~kBlock/lanes terms, whatever the plane size.
constexpr int64_t kBlock = 2048;
constexpr int64_t kMinWorkPerTask = 1 << 15;  // values; fewer per task costs more than it saves

// GCC/Clang vector extension: 64 bytes, which the compiler maps onto whatever SIMD width the
// build targets (4 SSE registers by default). Register accumulators, not arrays in memory:
// an array accumulator round-trips through the stack every iteration and measured ~2x slower.
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

int64_t grain_for(int64_t plane_size) {
  return std::max<int64_t>(1, kMinWorkPerTask / std::max<int64_t>(plane_size, 1));
}

// sum_i f(i) and sum_i h(i) over [0, n). term(i, f, h) adds f(i..) and h(i..) to f and h,
// for f, h either one scalar or one Pack of consecutive i (a generic lambda serves both).
template <typename scalar_t, typename Term>
void two_sums(int64_t n, const Term& term, double& sum_f, double& sum_h) {
  using V = typename Pack<scalar_t>::type;
  constexpr int64_t width = Pack<scalar_t>::width;
  double total_f = 0.0, total_h = 0.0;
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t stop = std::min(n, start + kBlock);
    V vf = {}, vh = {};
    int64_t i = start;
    for (; i + width <= stop; i += width) term(i, vf, vh);
    scalar_t f = 0, h = 0;
    for (int64_t l = 0; l < width; ++l) {
      f += vf[l];
      h += vh[l];
    }
    for (; i < stop; ++i) term(i, f, h);
    total_f += f;
    total_h += h;
  }
  sum_f = total_f;
  sum_h = total_h;
}

// Mean and biased variance of one plane. Sums are taken around the plane's first value, so a
// large offset does not cancel catastrophically in var = E[(x-k)^2] - E[x-k]^2.
template <typename scalar_t>
void moments_of(const scalar_t* plane, int64_t size, double& mean, double& var) {
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

void check_map(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "bcn plane ops: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.dim() == 4, "bcn plane ops: ", name, " must be (N, C, H, W), got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "bcn plane ops: ", name, " must be contiguous (NCHW)");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "bcn plane ops: ", name, " must be float32 or float64, got ", t.scalar_type());
}

void check_grad_and_map(const at::Tensor& g, const at::Tensor& x) {
  check_map(g, "grad");
  check_map(x, "x");
  TORCH_CHECK(g.sizes() == x.sizes() && g.scalar_type() == x.scalar_type(),
              "bcn plane ops: grad and x differ in shape or dtype");
}

void check_coefficient(const at::Tensor& t, const at::Tensor& map, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == map.scalar_type() &&
                  t.numel() == map.size(0) * map.size(1),
              "bcn plane ops: ", name, " must be a contiguous (N, C) CPU tensor of the map's dtype");
}

// Per-plane mean and biased variance.
std::tuple<at::Tensor, at::Tensor> plane_moments(const at::Tensor& x) {
  check_map(x, "x");
  const int64_t planes = x.size(0) * x.size(1), size = x.size(2) * x.size(3);
  TORCH_CHECK(size > 0, "bcn plane ops: empty planes");
  auto mean = at::empty({x.size(0), x.size(1)}, x.options());
  auto var = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "plane_moments", [&] {
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    scalar_t* pm = mean.mutable_data_ptr<scalar_t>();
    scalar_t* pv = var.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, planes, grain_for(size), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        double mean_p, var_p;
        moments_of(px + p * size, size, mean_p, var_p);
        pm[p] = static_cast<scalar_t>(mean_p);
        pv[p] = static_cast<scalar_t>(var_p);
      }
    });
  });
  return {mean, var};
}

// y = scale[n, c] * x + shift[n, c]
at::Tensor plane_affine(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift) {
  check_map(x, "x");
  check_coefficient(scale, x, "scale");
  check_coefficient(shift, x, "shift");
  const int64_t planes = x.size(0) * x.size(1), size = x.size(2) * x.size(3);
  auto y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "plane_affine", [&] {
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    const scalar_t* pa = scale.const_data_ptr<scalar_t>();
    const scalar_t* pb = shift.const_data_ptr<scalar_t>();
    scalar_t* py = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, planes, grain_for(size), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const scalar_t a = pa[p], b = pb[p];
        const scalar_t* in = px + p * size;
        scalar_t* out = py + p * size;
        for (int64_t i = 0; i < size; ++i) out[i] = a * in[i] + b;
      }
    });
  });
  return y;
}

// Per-plane sum(g) and sum(g * (x - centre[n, c])): the two reductions of the backward pass.
std::tuple<at::Tensor, at::Tensor> plane_grad_sums(const at::Tensor& g, const at::Tensor& x,
                                                   const at::Tensor& centre) {
  check_grad_and_map(g, x);
  check_coefficient(centre, x, "centre");
  const int64_t planes = x.size(0) * x.size(1), size = x.size(2) * x.size(3);
  auto sum_g = at::empty({x.size(0), x.size(1)}, x.options());
  auto sum_gx = at::empty_like(sum_g);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "plane_grad_sums", [&] {
    const scalar_t* pg = g.const_data_ptr<scalar_t>();
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    const scalar_t* pc = centre.const_data_ptr<scalar_t>();
    scalar_t* ps1 = sum_g.mutable_data_ptr<scalar_t>();
    scalar_t* ps2 = sum_gx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, planes, grain_for(size), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const scalar_t* gp = pg + p * size;
        const scalar_t* xp = px + p * size;
        const scalar_t c = pc[p];
        double s1, s2;
        two_sums<scalar_t>(size, [&](int64_t i, auto& f, auto& h) {
          using V = std::decay_t<decltype(f)>;
          const V gi = load<V>(gp + i);
          f += gi;
          h += gi * (load<V>(xp + i) - c);
        }, s1, s2);
        ps1[p] = static_cast<scalar_t>(s1);
        ps2[p] = static_cast<scalar_t>(s2);
      }
    });
  });
  return {sum_g, sum_gx};
}

// dx = a[n, c] * g + b[n, c] * x + c[n, c]
at::Tensor plane_affine_backward(const at::Tensor& g, const at::Tensor& x, const at::Tensor& a,
                                 const at::Tensor& b, const at::Tensor& c) {
  check_grad_and_map(g, x);
  check_coefficient(a, x, "a");
  check_coefficient(b, x, "b");
  check_coefficient(c, x, "c");
  const int64_t planes = x.size(0) * x.size(1), size = x.size(2) * x.size(3);
  auto dx = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "plane_affine_backward", [&] {
    const scalar_t* pg = g.const_data_ptr<scalar_t>();
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    const scalar_t *pa = a.const_data_ptr<scalar_t>(), *pb = b.const_data_ptr<scalar_t>(),
                   *pc = c.const_data_ptr<scalar_t>();
    scalar_t* pd = dx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, planes, grain_for(size), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const scalar_t ap = pa[p], bp = pb[p], cp = pc[p];
        const scalar_t* gp = pg + p * size;
        const scalar_t* xp = px + p * size;
        scalar_t* out = pd + p * size;
        for (int64_t i = 0; i < size; ++i) out[i] = ap * gp[i] + bp * xp[i] + cp;
      }
    });
  });
  return dx;
}

// BCN with step 1 fixed (eval): y = gamma_c r (a_c x + b_c - mu) + beta_c, where a_c, b_c
// are step 1 as a per-channel affine and mu[n,g], r[n,g] the group statistics of its output.
// One task per (sample, group): the group's moments, then its output while the group's
// planes are still in cache -- GroupNorm's own access pattern, so GroupNorm's time.
at::Tensor fixed_step1_forward(const at::Tensor& x, const at::Tensor& a, const at::Tensor& b,
                               const at::Tensor& gamma, const at::Tensor& beta, int64_t groups,
                               double eps) {
  check_map(x, "x");
  const int64_t n = x.size(0), channels = x.size(1), size = x.size(2) * x.size(3);
  TORCH_CHECK(groups > 0 && channels % groups == 0, "bcn plane ops: ", groups,
              " groups do not divide ", channels, " channels");
  TORCH_CHECK(size > 0, "bcn plane ops: empty planes");
  for (const at::Tensor* t : {&a, &b, &gamma, &beta}) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->numel() == channels &&
                    t->scalar_type() == x.scalar_type(),
                "bcn plane ops: per-channel coefficients must be contiguous (C,) CPU tensors of "
                "the map's dtype");
  }
  const int64_t per_group = channels / groups;
  auto y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fixed_step1_forward", [&] {
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    const scalar_t *pa = a.const_data_ptr<scalar_t>(), *pb = b.const_data_ptr<scalar_t>(),
                   *pgamma = gamma.const_data_ptr<scalar_t>(), *pbeta = beta.const_data_ptr<scalar_t>();
    scalar_t* py = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n * groups, grain_for(per_group * size), [&](int64_t begin, int64_t end) {
      std::vector<double> m1(per_group), v1(per_group);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t first = (task / groups) * channels + (task % groups) * per_group;  // plane
        const int64_t c0 = (task % groups) * per_group;
        double mu = 0.0;
        for (int64_t j = 0; j < per_group; ++j) {
          double mean_j, var_j;
          moments_of(px + (first + j) * size, size, mean_j, var_j);
          const double ac = pa[c0 + j];
          m1[j] = ac * mean_j + pb[c0 + j];
          v1[j] = ac * ac * var_j;
          mu += m1[j];
        }
        mu /= per_group;
        double var = 0.0;
        for (int64_t j = 0; j < per_group; ++j) var += v1[j] + (m1[j] - mu) * (m1[j] - mu);
        const double r = 1.0 / std::sqrt(var / per_group + eps);
        for (int64_t j = 0; j < per_group; ++j) {
          const int64_t c = c0 + j;
          const scalar_t scale = static_cast<scalar_t>(pgamma[c] * r * pa[c]);
          const scalar_t offset = static_cast<scalar_t>(pgamma[c] * r * (pb[c] - mu) + pbeta[c]);
          const scalar_t* in = px + (first + j) * size;
          scalar_t* out = py + (first + j) * size;
          for (int64_t i = 0; i < size; ++i) out[i] = scale * in[i] + offset;
        }
      }
    });
  });
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("plane_moments", &plane_moments, "per-(n, c) mean and biased variance over (H, W)");
  m.def("plane_affine", &plane_affine, "scale[n, c] * x + shift[n, c]");
  m.def("plane_grad_sums", &plane_grad_sums, "per-(n, c) sum(g) and sum(g * (x - centre))");
  m.def("fixed_step1_forward", &fixed_step1_forward,
        "BCN forward with step 1 a fixed per-channel affine (a, b); per-channel gamma, beta");
  m.def("plane_affine_backward", &plane_affine_backward, "a[n, c] * g + b[n, c] * x + c[n, c]");
}
