// Tiled front-to-back compositing of projected Gaussian splats on the CPU, with
// its backward: the C++ kernel behind cfd.render.composite (built ahead of use by
// cfd/cpu_kernel.py, in a child process, and only loaded by a request; the
// pure-torch _Composite is its reference). Its ops live in the namespace
// CFD_OPS_NAMESPACE, which the build sets per source hash.
//
// Input: the (tile, splat) intersections, front to back per tile (tile t's
// splats are tile_splats[tile_start[t] .. tile_start[t+1])), and per splat its
// features f [M,F], centre m [M,2], conic (a, b, c) [M,3] and log opacity [M].
// Tile t is tile t % (tiles_x·tiles_y) of view t / (tiles_x·tiles_y), pixel
// (col, row) of a tile has its centre at (x0 + col, y0 + row), x0 = tile_x·ts + ½.
// For a pixel p and the tile's splats i in order:
//
//   d_i     = p − m_i,  power_i = ½ a d_x² + ½ c d_y² + b d_x d_y
//   α_i     = min(alpha_max, exp(log o_i − power_i)), skipped (α_i = 0) below alpha_min
//   T_i     = Π_{j<i} (1 − α_j); the walk stops before the first splat whose
//             inclusion would bring the transmittance to T_i (1 − α_i) ≤ t_min
//   out     = Σ_i w_i f_i,  w_i = α_i T_i
//
// A splat visits only the pixels of its tile in the bounding box of its ellipse
// α ≥ alpha_min, which changes no result. The forward saves per pixel the final
// transmittance and how many of the tile's splats it walked (up to its last
// contributing one); the backward walks those back to front, recovering
// T_i = T_{i+1} / (1 − α_i) (gsplat's rasterize_to_pixels backward). Tiles run in
// parallel; the backward writes each (tile, splat) pair's gradient into its own
// row of a pair buffer and sums the rows per splat serially in pair order, so
// results are bit-identical for any number of threads.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

namespace {

// The tile layout: tiles of ts × ts pixels, tiles_x × tiles_y per view.
struct Geometry {
  int64_t ts, tiles_x, per_view, width, height;

  // Pixel column / row of tile t's first pixel in its view.
  int64_t x_of(int64_t t) const { return t % per_view % tiles_x * ts; }
  int64_t y_of(int64_t t) const { return t % per_view / tiles_x * ts; }
};

struct Thresholds {
  float alpha_min, alpha_max, t_min;
};

// One splat of one tile, in that tile's pixel frame.
struct TileSplat {
  float ox, oy;     // d at the tile's first pixel centre: (x0 − m_x, y0 − m_y)
  float a, b, c;    // conic
  float log_o;      // log opacity
  float power_cut;  // above this power α < alpha_min for certain: exp is skipped
};

// The splats of pairs[lo, hi), gathered for the tile whose first pixel centre is (x0, y0).
void gather(std::vector<TileSplat>& out, const int64_t* pairs, int64_t lo, int64_t hi, float x0, float y0,
            const float* means, const float* conics, const float* log_o, float log_alpha_min) {
  out.resize(hi - lo);
  for (int64_t k = lo; k < hi; ++k) {
    const int64_t s = pairs[k];
    // α < alpha_min ⇔ log o − power < log alpha_min; the 0.01 margin covers
    // the rounding of the subtraction and of exp, so the cut is never wrong
    out[k - lo] = {x0 - means[2 * s], y0 - means[2 * s + 1], conics[3 * s], conics[3 * s + 1],
                   conics[3 * s + 2], log_o[s], log_o[s] - log_alpha_min + 0.01f};
  }
}

// α of splat s at pixel (col, row) of its tile, 0 when below alpha_min; sets d.
// The power is evaluated in _Composite's order of operations (same rounding).
inline float alpha_at(const TileSplat& s, float col, float row, const Thresholds& th, float& dx, float& dy) {
  dx = s.ox + col;
  dy = s.oy + row;
  const float power = 0.5f * s.a * dx * dx + 0.5f * s.c * dy * dy + s.b * dy * dx;
  if (power > s.power_cut) return 0.0f;
  const float alpha = std::min(th.alpha_max, std::exp(s.log_o - power));
  return alpha < th.alpha_min ? 0.0f : alpha;
}

// ⌈x⌉ clamped to [lo, hi] (NaN → lo), without a libm call.
inline int32_t ceil_within(double x, int32_t lo, int32_t hi) {
  if (!(x > lo)) return lo;
  if (x >= hi) return hi;
  const int32_t i = int32_t(x);  // truncates: ⌊x⌋ for x ≥ 0, ⌈x⌉ for x < 0
  return i + (double(i) < x);
}

// ⌊x⌋ clamped to [lo, hi] (NaN → hi), without a libm call.
inline int32_t floor_within(double x, int32_t lo, int32_t hi) {
  if (!(x < hi)) return hi;
  if (x <= lo) return lo;
  const int32_t i = int32_t(x);  // truncates: ⌊x⌋ for x ≥ 0, ⌈x⌉ for x < 0
  return i - (double(i) > x);
}

// The pixels of a tile that splat s may reach: columns c0 … c1 of rows r0 … r1
// (empty if c0 > c1 or r0 > r1); outside it the power exceeds power_cut, alpha_at
// is 0 and a pixel can skip the splat.
struct Box {
  int32_t c0, c1, r0, r1;
};

// The Box of splat s in a tile whose first rows × cols pixels lie in the image.
// power ≤ cut is an ellipse (a, c > 0, det = ac − b² > 0) inside |d_x| ≤
// √(2c·cut / det), |d_y| ≤ √(2a·cut / det). Solved in double for a quadratic
// with a, c lowered by δ(a + |b|), δ(c + |b|), which lies below the true power by
// at least δ (½a d_x² + ½c d_y² + |b d_x d_y|): far more than the float rounding
// of the power (< 1e-6 of those terms), so a pixel outside the box is one that
// alpha_at skips.
Box reach_box(const TileSplat& s, int64_t rows, int64_t cols) {
  constexpr double delta = 1e-5;
  const double b = s.b, a = s.a - delta * (s.a + std::abs(b)), c = s.c - delta * (s.c + std::abs(b));
  const double cut = s.power_cut, det = a * c - b * b;
  if (!(a > 0 && c > 0 && det > 0)) return {0, int32_t(cols - 1), 0, int32_t(rows - 1)};  // no bound
  if (!(cut >= 0)) return {1, 0, 1, 0};  // nowhere reaches alpha_min
  const double reach_x = std::sqrt(2.0 * c * cut / det), reach_y = std::sqrt(2.0 * a * cut / det);
  // pixel column col has d_x = ox + col
  return {ceil_within(-reach_x - s.ox, 0, int32_t(cols)), floor_within(reach_x - s.ox, -1, int32_t(cols - 1)),
          ceil_within(-reach_y - s.oy, 0, int32_t(rows)), floor_within(reach_y - s.oy, -1, int32_t(rows - 1))};
}

void check(const at::Tensor& x, at::ScalarType type, int64_t dim, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == type && x.dim() == dim && x.is_contiguous(), name,
              ": expected a contiguous CPU tensor of ", dim, " dims and type ", type, ", got ", x.scalar_type(),
              " of shape ", x.sizes());
}

// x's size along dim is size (every index the kernel computes stays inside x).
void check_size(const at::Tensor& x, int64_t dim, int64_t size, const char* name, const char* what) {
  TORCH_CHECK(x.size(dim) == size, name, ": expected size ", size, " along dim ", dim, " (", what, "), got shape ",
              x.sizes());
}

// What both passes read: the intersections and the splats, checked, with the
// tile layout and thresholds.
struct Inputs {
  Geometry geo;
  Thresholds th;
  int64_t n_tiles, n_pix, M, F;
  const int64_t *start, *pairs;
  const float *feat, *means, *conic, *log_o;
  float log_alpha_min;

  Inputs(const at::Tensor& tile_start, const at::Tensor& tile_splats, const at::Tensor& features,
         const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& log_opacities, int64_t tile_size,
         int64_t tiles_x, int64_t tiles_y, int64_t width, int64_t height, double alpha_min, double alpha_max,
         double t_min)
      : geo{tile_size, tiles_x, tiles_x * tiles_y, width, height},
        th{float(alpha_min), float(alpha_max), float(t_min)} {
    check(tile_start, at::kLong, 1, "tile_start");
    check(tile_splats, at::kLong, 1, "tile_splats");
    check(features, at::kFloat, 2, "features");
    check(means2d, at::kFloat, 2, "means2d");
    check(conics, at::kFloat, 2, "conics");
    check(log_opacities, at::kFloat, 1, "log_opacities");
    // the layout: tiles of the image, n_tiles a whole number of views
    TORCH_CHECK(tile_size > 0 && tiles_x > 0 && tiles_y > 0, "tile_size, tiles_x, tiles_y: expected > 0, got ",
                tile_size, ", ", tiles_x, ", ", tiles_y);
    TORCH_CHECK(width > 0 && height > 0 && (width + tile_size - 1) / tile_size == tiles_x &&
                    (height + tile_size - 1) / tile_size == tiles_y,
                "width, height: expected ", tiles_x, " × ", tiles_y, " tiles of ", tile_size, " px, got ", width,
                " × ", height, " px");
    TORCH_CHECK(tile_start.size(0) >= 1 && (tile_start.size(0) - 1) % (tiles_x * tiles_y) == 0,
                "tile_start: expected 1 + views · ", tiles_x * tiles_y, " entries, got ", tile_start.size(0));
    n_tiles = tile_start.size(0) - 1;
    n_pix = tile_size * tile_size;
    M = features.size(0);
    F = features.size(1);
    // one row per splat in every per-splat tensor
    check_size(means2d, 0, M, "means2d", "splats, as features");
    check_size(means2d, 1, 2, "means2d", "x, y");
    check_size(conics, 0, M, "conics", "splats, as features");
    check_size(conics, 1, 3, "conics", "a, b, c");
    check_size(log_opacities, 0, M, "log_opacities", "splats, as features");
    start = tile_start.data_ptr<int64_t>();
    pairs = tile_splats.data_ptr<int64_t>();
    // tile t's pairs are pairs[start[t] .. start[t + 1]), all inside tile_splats,
    // and each pair's splat is one of the M
    const int64_t P = tile_splats.size(0);
    TORCH_CHECK(start[0] == 0 && start[n_tiles] == P, "tile_start: expected to run from 0 to ", P,
                " (the pairs in tile_splats), got ", start[0], " … ", start[n_tiles]);
    for (int64_t t = 0; t < n_tiles; ++t)
      TORCH_CHECK(start[t] <= start[t + 1], "tile_start: expected non-decreasing, got ", start[t], " then ",
                  start[t + 1], " at tile ", t);
    for (int64_t k = 0; k < P; ++k)
      TORCH_CHECK(pairs[k] >= 0 && pairs[k] < M, "tile_splats: expected splat indices in [0, ", M, "), got ",
                  pairs[k], " at pair ", k);
    feat = features.data_ptr<float>();
    means = means2d.data_ptr<float>();
    conic = conics.data_ptr<float>();
    log_o = log_opacities.data_ptr<float>();
    log_alpha_min = std::log(th.alpha_min);
  }
};

// Tile t: its first pair, its number of splats K and its rows × cols pixels
// inside the image; its splats gathered into ``splats`` in its pixel frame.
struct Tile {
  int64_t first, K, rows, cols;

  Tile(const Inputs& in, int64_t t, std::vector<TileSplat>& splats)
      : first(in.start[t]), K(in.start[t + 1] - in.start[t]) {
    const int64_t px0 = in.geo.x_of(t), py0 = in.geo.y_of(t);
    rows = std::min(in.geo.ts, in.geo.height - py0);
    cols = std::min(in.geo.ts, in.geo.width - px0);
    gather(splats, in.pairs, first, first + K, float(px0) + 0.5f, float(py0) + 0.5f, in.means, in.conic,
           in.log_o, in.log_alpha_min);
  }
};

// out [n_tiles, ts², F] (0 outside the image), final T [n_tiles, ts²], and the
// number of the tile's splats each pixel walked, up to its last contributing one
// [n_tiles, ts²] int32.
std::tuple<at::Tensor, at::Tensor, at::Tensor> composite_forward(
    const at::Tensor& tile_start, const at::Tensor& tile_splats, const at::Tensor& features,
    const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& log_opacities, int64_t tile_size,
    int64_t tiles_x, int64_t tiles_y, int64_t width, int64_t height, double alpha_min, double alpha_max,
    double t_min) {
  const Inputs in(tile_start, tile_splats, features, means2d, conics, log_opacities, tile_size, tiles_x, tiles_y,
                  width, height, alpha_min, alpha_max, t_min);
  const int64_t n_tiles = in.n_tiles, n_pix = in.n_pix, F = in.F;
  const int64_t* pairs = in.pairs;
  const float* feat = in.feat;
  const Thresholds& th = in.th;
  at::Tensor out = at::zeros({n_tiles, n_pix, F}, features.options());
  at::Tensor final_T = at::ones({n_tiles, n_pix}, features.options());
  at::Tensor n_used = at::zeros({n_tiles, n_pix}, features.options().dtype(at::kInt));
  float* out_p = out.data_ptr<float>();
  float* T_p = final_T.data_ptr<float>();
  int32_t* used_p = n_used.data_ptr<int32_t>();

  // Per tile, splat by splat in depth order, the pixels of the splat's box that
  // have not stopped yet: the same operations per pixel, in the same order, as a
  // pixel walking the tile's splats front to back (gsplat), minus skipped ones.
  at::parallel_for(0, n_tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<TileSplat> splats;
    std::vector<uint8_t> stopped(n_pix);
    for (int64_t t = begin; t < end; ++t) {
      const Tile tile(in, t, splats);
      const int64_t first = tile.first, K = tile.K, rows = tile.rows, cols = tile.cols;
      float* acc = out_p + t * n_pix * F;  // this tile's Σ w f, T and walk lengths
      float* T = T_p + t * n_pix;
      int32_t* used = used_p + t * n_pix;
      std::fill(stopped.begin(), stopped.end(), 0);
      int64_t n_stopped = 0;
      for (int64_t k = 0; k < K && n_stopped < rows * cols; ++k) {
        const TileSplat& s = splats[k];
        const float* f = feat + pairs[first + k] * F;
        const Box box = reach_box(s, rows, cols);
        for (int64_t row = box.r0; row <= box.r1; ++row) {
          for (int64_t col = box.c0; col <= box.c1; ++col) {
            const int64_t pix = row * tile_size + col;
            if (stopped[pix]) continue;
            float dx, dy;
            const float alpha = alpha_at(s, float(col), float(row), th, dx, dy);
            if (alpha == 0.0f) continue;
            const float next_T = T[pix] * (1.0f - alpha);
            if (next_T <= th.t_min) {  // early stop: this splat and all behind it are left out
              stopped[pix] = 1;
              ++n_stopped;
              continue;
            }
            const float w = alpha * T[pix];
            for (int64_t j = 0; j < F; ++j) acc[pix * F + j] += w * f[j];
            T[pix] = next_T;
            used[pix] = int32_t(k + 1);
          }
        }
      }
    }
  });
  return {out, final_T, n_used};
}

// Gradients w.r.t. features [M,F], means2d [M,2], conics [M,3], log opacities [M]
// from grad_out [n_tiles, ts², F] and the forward's final T and walk lengths.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> composite_backward(
    const at::Tensor& tile_start, const at::Tensor& tile_splats, const at::Tensor& features,
    const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& log_opacities,
    const at::Tensor& grad_out, const at::Tensor& final_T, const at::Tensor& n_used, int64_t tile_size,
    int64_t tiles_x, int64_t tiles_y, int64_t width, int64_t height, double alpha_min, double alpha_max,
    double t_min) {
  const Inputs in(tile_start, tile_splats, features, means2d, conics, log_opacities, tile_size, tiles_x, tiles_y,
                  width, height, alpha_min, alpha_max, t_min);
  check(grad_out, at::kFloat, 3, "grad_out");
  check(final_T, at::kFloat, 2, "final_T");
  check(n_used, at::kInt, 2, "n_used");
  check_size(grad_out, 0, in.n_tiles, "grad_out", "tiles");
  check_size(grad_out, 1, in.n_pix, "grad_out", "pixels per tile");
  check_size(grad_out, 2, in.F, "grad_out", "features");
  check_size(final_T, 0, in.n_tiles, "final_T", "tiles");
  check_size(final_T, 1, in.n_pix, "final_T", "pixels per tile");
  check_size(n_used, 0, in.n_tiles, "n_used", "tiles");
  check_size(n_used, 1, in.n_pix, "n_used", "pixels per tile");
  const int64_t n_tiles = in.n_tiles, n_pix = in.n_pix, M = in.M, F = in.F, P = tile_splats.size(0);
  const int64_t* pairs = in.pairs;
  const float* feat = in.feat;
  const Thresholds& th = in.th;
  // per (tile, splat) pair: dL/df [P,F]; dL/d(m_x, m_y, a, b, c, log o) [P,6]
  at::Tensor pair_f = at::empty({P, F}, features.options());
  at::Tensor pair_g = at::empty({P, 6}, features.options());
  const float* g_p = grad_out.data_ptr<float>();
  const float* T_p = final_T.data_ptr<float>();
  const int32_t* used_p = n_used.data_ptr<int32_t>();
  float* pf_p = pair_f.data_ptr<float>();
  float* pg_p = pair_g.data_ptr<float>();

  // Per tile, splat by splat back to front over the pixels of its box that it
  // contributed to: each pixel sees the reverse of its forward walk.
  at::parallel_for(0, n_tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<TileSplat> splats;
    std::vector<int32_t> used(n_pix);
    std::vector<float> T(n_pix), behind(n_pix), df(F);
    for (int64_t t = begin; t < end; ++t) {
      const Tile tile(in, t, splats);
      const int64_t first = tile.first, K = tile.K, rows = tile.rows, cols = tile.cols;
      const float* g_tile = g_p + t * n_pix * F;
      for (int64_t pix = 0; pix < n_pix; ++pix) {
        const float* g = g_tile + pix * F;
        const bool zero = std::all_of(g, g + F, [](float x) { return x == 0.0f; });
        used[pix] = zero ? 0 : used_p[t * n_pix + pix];  // a pixel without gradient propagates nothing
        T[pix] = T_p[t * n_pix + pix];  // becomes T_i, the transmittance in front of splat i
        behind[pix] = 0.0f;             // Σ_{j>i} w_j v_j, with v_j = dL/dw_j = f_j·g
      }
      for (int64_t k = K - 1; k >= 0; --k) {
        const TileSplat& s = splats[k];
        const float* f = feat + pairs[first + k] * F;
        std::fill(df.begin(), df.end(), 0.0f);  // this pair's dL/df
        float dg[6] = {};                       // and dL/d(m_x, m_y, a, b, c, log o)
        const Box box = reach_box(s, rows, cols);
        for (int64_t row = box.r0; row <= box.r1; ++row) {
          for (int64_t col = box.c0; col <= box.c1; ++col) {
            const int64_t pix = row * tile_size + col;
            if (k >= used[pix]) continue;
            float dx, dy;
            const float alpha = alpha_at(s, float(col), float(row), th, dx, dy);
            if (alpha == 0.0f) continue;
            const float inv_keep = 1.0f / (1.0f - alpha);
            T[pix] *= inv_keep;
            const float w = alpha * T[pix];
            const float* g = g_tile + pix * F;
            float v = 0.0f;
            for (int64_t j = 0; j < F; ++j) {
              v += f[j] * g[j];
              df[j] += w * g[j];  // dL/df_i = w_i g
            }
            // dL/dα_i = v_i T_i − Σ_{j>i} w_j v_j / (1 − α_i); α clamped at alpha_max
            // has no gradient. G = dL/dlog o_i = α_i dL/dα_i = −dL/dpower_i, and
            // dpower/dm = −(a d_x + b d_y, b d_x + c d_y), dpower/d(a, b, c) = (½d_x², d_x d_y, ½d_y²).
            if (alpha < th.alpha_max) {
              const float G = alpha * (v * T[pix] - behind[pix] * inv_keep);
              dg[0] += G * (s.a * dx + s.b * dy);
              dg[1] += G * (s.b * dx + s.c * dy);
              dg[2] -= G * 0.5f * dx * dx;
              dg[3] -= G * dx * dy;
              dg[4] -= G * 0.5f * dy * dy;
              dg[5] += G;
            }
            behind[pix] += w * v;
          }
        }
        std::copy(df.begin(), df.end(), pf_p + (first + k) * F);
        std::copy(dg, dg + 6, pg_p + (first + k) * 6);
      }
    }
  });

  // per splat, the sum of its pairs' rows in pair order: fixed, thread-independent
  at::Tensor grad_f = at::zeros({M, F}, features.options());
  at::Tensor grad_m = at::zeros({M, 2}, features.options());
  at::Tensor grad_c = at::zeros({M, 3}, features.options());
  at::Tensor grad_log_o = at::zeros({M}, features.options());
  float* gf = grad_f.data_ptr<float>();
  float* gm = grad_m.data_ptr<float>();
  float* gc = grad_c.data_ptr<float>();
  float* gl = grad_log_o.data_ptr<float>();
  for (int64_t p = 0; p < P; ++p) {
    const int64_t s = pairs[p];
    const float* pf = pf_p + p * F;
    const float* pg = pg_p + p * 6;
    for (int64_t j = 0; j < F; ++j) gf[s * F + j] += pf[j];
    gm[2 * s] += pg[0];
    gm[2 * s + 1] += pg[1];
    for (int64_t j = 0; j < 3; ++j) gc[3 * s + j] += pg[2 + j];
    gl[s] += pg[5];
  }
  return {grad_f, grad_m, grad_c, grad_log_o};
}

}  // namespace

// The ops' namespace: cfd_composite_cpu_<source hash> as cfd/cpu_kernel.py builds
// it, so two builds (two sources) can be loaded in one process without clashing.
#ifndef CFD_OPS_NAMESPACE
#define CFD_OPS_NAMESPACE cfd_composite_cpu
#endif
// one more macro level, so CFD_OPS_NAMESPACE is expanded before TORCH_LIBRARY pastes it
#define CFD_TORCH_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)

CFD_TORCH_LIBRARY(CFD_OPS_NAMESPACE, m) {
  m.def(
      "forward(Tensor tile_start, Tensor tile_splats, Tensor features, Tensor means2d, Tensor conics, "
      "Tensor log_opacities, int tile_size, int tiles_x, int tiles_y, int width, int height, "
      "float alpha_min, float alpha_max, float t_min) -> (Tensor, Tensor, Tensor)",
      composite_forward);
  m.def(
      "backward(Tensor tile_start, Tensor tile_splats, Tensor features, Tensor means2d, Tensor conics, "
      "Tensor log_opacities, Tensor grad_out, Tensor final_T, Tensor n_used, int tile_size, int tiles_x, "
      "int tiles_y, int width, int height, float alpha_min, float alpha_max, float t_min) "
      "-> (Tensor, Tensor, Tensor, Tensor)",
      composite_backward);
}
