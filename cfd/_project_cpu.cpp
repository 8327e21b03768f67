// EWA projection of 3D Gaussian splats into C pinhole views on the CPU, with its
// backward: the C++ kernel behind cfd.render.project (pure-torch reference:
// cfd.render.project_torch). Built into one library with the compositor
// (_composite_cpu.cpp) by cfd/cpu_kernel.py; its ops join the namespace
// CFD_OPS_NAMESPACE.
//
// Per view c (world-to-camera rotation R, translation t, focal fx, fy, centre
// cx, cy, image W × H) and splat i (centre m, quaternion q, scales s, opacity o):
//
//   p = R m + t = (x, y, z),  z_s = max(z, near)
//   u = clamp(x / z_s, −(cx/fx + 0.15 W/fx), (W − cx)/fx + 0.15 W/fx),  t_x = z_s u
//   (likewise t_y: gsplat's Jacobian clamped to the frustum widened by 30 %)
//   J = [[fx/z_s, 0, −fx t_x/z_s²], [0, fy/z_s, −fy t_y/z_s²]]
//   M = J R Rot(q/|q|) diag(s),  Σ' = M Mᵀ + eps2d I = [[a, b], [b, c]]
//   conic = (c, −b, a) / max(ac − b², 1e-10),  mean2d = (fx x/z_s + cx, fy y/z_s + cy),  depth = z
//   radius per axis = ⌈e √a⌉, ⌈e √c⌉ with e = min(extent_sigmas, √(2 ln(o / alpha_min))):
//   the box where α = o·exp(−½ dᵀΣ'⁻¹d) ≥ alpha_min (gsplat's opacity-aware
//   extent); 0 (culled) when o < alpha_min, z ≤ near or the box misses the image.
//
// The backward takes the gradients of mean2d, conic and depth and returns those
// of m, q and s, summed over the views. Forward and backward run in parallel
// over splats, each splat's views in order, so results are bit-identical for
// any number of threads.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

namespace {

// One view's camera.
struct View {
  float R[9], t[3], fx, fy, cx, cy, lim_x_lo, lim_x_hi, lim_y_lo, lim_y_hi;

  View(const float* viewmat, const float* K, int64_t width, int64_t height) {
    for (int r = 0; r < 3; ++r) {
      for (int k = 0; k < 3; ++k) R[3 * r + k] = viewmat[4 * r + k];
      t[r] = viewmat[4 * r + 3];
    }
    fx = K[0], fy = K[4], cx = K[2], cy = K[5];
    const float W = float(width), H = float(height);
    lim_x_lo = -(cx / fx + 0.3f * 0.5f * W / fx), lim_x_hi = (W - cx) / fx + 0.3f * 0.5f * W / fx;
    lim_y_lo = -(cy / fy + 0.3f * 0.5f * H / fy), lim_y_hi = (H - cy) / fy + 0.3f * 0.5f * H / fy;
  }
};

// Rotation matrix (row-major) of the unit quaternion (w, x, y, z).
void rotmat(const float* q, float* Rot) {
  const float w = q[0], x = q[1], y = q[2], z = q[3];
  Rot[0] = 1 - 2 * (y * y + z * z), Rot[1] = 2 * (x * y - w * z), Rot[2] = 2 * (x * z + w * y);
  Rot[3] = 2 * (x * y + w * z), Rot[4] = 1 - 2 * (x * x + z * z), Rot[5] = 2 * (y * z - w * x);
  Rot[6] = 2 * (x * z - w * y), Rot[7] = 2 * (y * z + w * x), Rot[8] = 1 - 2 * (x * x + y * y);
}

// q / max(|q|, 1e-12) (torch.nn.functional.normalize); returns the divisor.
float normalise(const float* q, float* unit) {
  const float n = std::max(std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]), 1e-12f);
  for (int k = 0; k < 4; ++k) unit[k] = q[k] / n;
  return n;
}

// The per-(view, splat) quantities the forward outputs and the backward reuses.
struct Projected {
  float x, y, z, zs, u, v;   // camera-space centre, clamped depth, clamped x/z_s and y/z_s
  bool u_free, v_free;       // u, v unclamped
  float J[6];                // 2 × 3
  float P[6];                // J R, 2 × 3
  float M[6];                // J R Rot diag(s), 2 × 3
  float a, b, c, det;        // Σ' and its determinant (clamped)
  bool det_free;             // det above its clamp
};

Projected project_one(const View& v, const float* m, const float* RotS, float near, float eps2d) {
  Projected p;
  const float* R = v.R;
  p.x = R[0] * m[0] + R[1] * m[1] + R[2] * m[2] + v.t[0];
  p.y = R[3] * m[0] + R[4] * m[1] + R[5] * m[2] + v.t[1];
  p.z = R[6] * m[0] + R[7] * m[1] + R[8] * m[2] + v.t[2];
  p.zs = std::max(p.z, near);
  const float ux = p.x / p.zs, uy = p.y / p.zs;
  p.u = std::min(std::max(ux, v.lim_x_lo), v.lim_x_hi);
  p.v = std::min(std::max(uy, v.lim_y_lo), v.lim_y_hi);
  p.u_free = ux >= v.lim_x_lo && ux <= v.lim_x_hi;
  p.v_free = uy >= v.lim_y_lo && uy <= v.lim_y_hi;
  const float tx = p.zs * p.u, ty = p.zs * p.v, zs2 = p.zs * p.zs;
  p.J[0] = v.fx / p.zs, p.J[1] = 0, p.J[2] = -v.fx * tx / zs2;
  p.J[3] = 0, p.J[4] = v.fy / p.zs, p.J[5] = -v.fy * ty / zs2;
  for (int r = 0; r < 2; ++r)
    for (int k = 0; k < 3; ++k)
      p.P[3 * r + k] = p.J[3 * r] * R[k] + p.J[3 * r + 1] * R[3 + k] + p.J[3 * r + 2] * R[6 + k];
  for (int r = 0; r < 2; ++r)
    for (int k = 0; k < 3; ++k)
      p.M[3 * r + k] = p.P[3 * r] * RotS[k] + p.P[3 * r + 1] * RotS[3 + k] + p.P[3 * r + 2] * RotS[6 + k];
  const float* M = p.M;
  p.a = M[0] * M[0] + M[1] * M[1] + M[2] * M[2] + eps2d;
  p.b = M[0] * M[3] + M[1] * M[4] + M[2] * M[5];
  p.c = M[3] * M[3] + M[4] * M[4] + M[5] * M[5] + eps2d;
  const float det = p.a * p.c - p.b * p.b;
  p.det_free = det > 1e-10f;
  p.det = p.det_free ? det : 1e-10f;
  return p;
}

// Rot(q) diag(s), row-major.
void rot_scaled(const float* Rot, const float* s, float* RotS) {
  for (int r = 0; r < 3; ++r)
    for (int k = 0; k < 3; ++k) RotS[3 * r + k] = Rot[3 * r + k] * s[k];
}

void check(const at::Tensor& x, const char* name, int64_t last) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous(), name,
              " must be a contiguous float32 CPU tensor");
  TORCH_CHECK(x.size(-1) == last, name, " must have ", last, " values per row");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> project_forward(
    const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales, const at::Tensor& opacities,
    const at::Tensor& viewmats, const at::Tensor& Ks, int64_t width, int64_t height, double near, double eps2d,
    double extent_sigmas, double alpha_min) {
  check(means, "means", 3), check(quats, "quats", 4), check(scales, "scales", 3), check(Ks, "Ks", 3);
  check(viewmats, "viewmats", 4);
  TORCH_CHECK(opacities.dim() == 1 && opacities.size(0) == means.size(0) && opacities.is_contiguous() &&
                  opacities.scalar_type() == at::kFloat, "opacities must be a contiguous float32 [N] tensor");
  const int64_t N = means.size(0), C = viewmats.size(0);
  at::Tensor means2d = at::empty({C, N, 2}, means.options()), conics = at::empty({C, N, 3}, means.options());
  at::Tensor depths = at::empty({C, N}, means.options()), radii = at::empty({C, N, 2}, means.options());
  const float *m_p = means.data_ptr<float>(), *q_p = quats.data_ptr<float>(), *s_p = scales.data_ptr<float>();
  const float *o_p = opacities.data_ptr<float>(), *vm = viewmats.data_ptr<float>(), *K_p = Ks.data_ptr<float>();
  float *m2 = means2d.data_ptr<float>(), *cn = conics.data_ptr<float>();
  float *dp = depths.data_ptr<float>(), *rd = radii.data_ptr<float>();
  std::vector<View> views;
  for (int64_t c = 0; c < C; ++c) views.emplace_back(vm + 16 * c, K_p + 9 * c, width, height);
  const float fnear = float(near), feps = float(eps2d), W = float(width), H = float(height);
  at::parallel_for(0, N, 256, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      float unit[4], Rot[9], RotS[9];
      normalise(q_p + 4 * i, unit);
      rotmat(unit, Rot);
      rot_scaled(Rot, s_p + 3 * i, RotS);
      const float o = o_p[i];
      const float extent =
          o < alpha_min ? 0.0f : float(std::min(extent_sigmas, std::sqrt(2.0 * std::log(double(o) / alpha_min))));
      for (int64_t c = 0; c < C; ++c) {
        const View& v = views[c];
        const Projected p = project_one(v, m_p + 3 * i, RotS, fnear, feps);
        const int64_t k = c * N + i;
        const float mx = v.fx * p.x / p.zs + v.cx, my = v.fy * p.y / p.zs + v.cy;
        m2[2 * k] = mx, m2[2 * k + 1] = my;
        cn[3 * k] = p.c / p.det, cn[3 * k + 1] = -p.b / p.det, cn[3 * k + 2] = p.a / p.det;
        dp[k] = p.z;
        const float rx = std::ceil(extent * std::sqrt(p.a)), ry = std::ceil(extent * std::sqrt(p.c));
        const bool visible = p.z > fnear && o >= alpha_min && mx + rx > 0 && mx - rx < W && my + ry > 0 && my - ry < H;
        rd[2 * k] = visible ? rx : 0.0f, rd[2 * k + 1] = visible ? ry : 0.0f;
      }
    }
  });
  return {means2d, conics, depths, radii};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> project_backward(
    const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales, const at::Tensor& viewmats,
    const at::Tensor& Ks, const at::Tensor& grad_means2d, const at::Tensor& grad_conics,
    const at::Tensor& grad_depths, int64_t width, int64_t height, double near, double eps2d) {
  check(means, "means", 3), check(quats, "quats", 4), check(scales, "scales", 3), check(Ks, "Ks", 3);
  check(viewmats, "viewmats", 4), check(grad_means2d, "grad_means2d", 2), check(grad_conics, "grad_conics", 3);
  TORCH_CHECK(grad_depths.numel() == viewmats.size(0) * means.size(0) && grad_depths.is_contiguous(),
              "grad_depths must be a contiguous [C, N] tensor");
  const int64_t N = means.size(0), C = viewmats.size(0);
  at::Tensor grad_means = at::zeros({N, 3}, means.options()), grad_quats = at::zeros({N, 4}, means.options());
  at::Tensor grad_scales = at::zeros({N, 3}, means.options());
  const float *m_p = means.data_ptr<float>(), *q_p = quats.data_ptr<float>(), *s_p = scales.data_ptr<float>();
  const float *vm = viewmats.data_ptr<float>(), *K_p = Ks.data_ptr<float>();
  const float *gm2 = grad_means2d.data_ptr<float>(), *gcn = grad_conics.data_ptr<float>();
  const float* gdp = grad_depths.data_ptr<float>();
  float *gm = grad_means.data_ptr<float>(), *gq = grad_quats.data_ptr<float>(), *gs = grad_scales.data_ptr<float>();
  std::vector<View> views;
  for (int64_t c = 0; c < C; ++c) views.emplace_back(vm + 16 * c, K_p + 9 * c, width, height);
  const float fnear = float(near), feps = float(eps2d);
  at::parallel_for(0, N, 256, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      float unit[4], Rot[9], RotS[9];
      const float norm = normalise(q_p + 4 * i, unit);
      rotmat(unit, Rot);
      const float* s = s_p + 3 * i;
      rot_scaled(Rot, s, RotS);
      float g_RotS[9] = {0};   // dL/d(Rot diag(s)), summed over the views
      float g_m[3] = {0};
      for (int64_t c = 0; c < C; ++c) {
        const View& v = views[c];
        const Projected p = project_one(v, m_p + 3 * i, RotS, fnear, feps);
        const int64_t k = c * N + i;
        // conic = (c, −b, a) / det → Σ' = [[a, b], [b, c]]
        const float g0 = gcn[3 * k], g1 = gcn[3 * k + 1], g2 = gcn[3 * k + 2];
        const float inv = 1.0f / p.det, S = p.det_free ? (g0 * p.c - g1 * p.b + g2 * p.a) * inv * inv : 0.0f;
        const float ga = g2 * inv - S * p.c, gc = g0 * inv - S * p.a, gb = -g1 * inv + 2.0f * S * p.b;
        // Σ' = M Mᵀ: a = M₀·M₀, b = M₀·M₁, c = M₁·M₁
        float gM[6];
        for (int j = 0; j < 3; ++j) {
          gM[j] = 2.0f * ga * p.M[j] + gb * p.M[3 + j];
          gM[3 + j] = gb * p.M[j] + 2.0f * gc * p.M[3 + j];
        }
        // M = P RotS: dRotS += Pᵀ gM, dP = gM RotSᵀ; P = J R: dJ = dP Rᵀ
        float gP[6];
        for (int r = 0; r < 3; ++r)
          for (int j = 0; j < 3; ++j) g_RotS[3 * r + j] += p.P[r] * gM[j] + p.P[3 + r] * gM[3 + j];
        for (int r = 0; r < 2; ++r)
          for (int j = 0; j < 3; ++j)
            gP[3 * r + j] = gM[3 * r] * RotS[3 * j] + gM[3 * r + 1] * RotS[3 * j + 1] + gM[3 * r + 2] * RotS[3 * j + 2];
        float gJ[6];
        for (int r = 0; r < 2; ++r)
          for (int j = 0; j < 3; ++j)
            gJ[3 * r + j] = gP[3 * r] * v.R[3 * j] + gP[3 * r + 1] * v.R[3 * j + 1] + gP[3 * r + 2] * v.R[3 * j + 2];
        // J of z_s, t_x = z_s u, t_y = z_s v
        const float zs = p.zs, zs2 = zs * zs, zs3 = zs2 * zs, tx = zs * p.u, ty = zs * p.v;
        float g_zs = -gJ[0] * v.fx / zs2 + gJ[2] * 2.0f * v.fx * tx / zs3 - gJ[4] * v.fy / zs2 +
                     gJ[5] * 2.0f * v.fy * ty / zs3;
        const float g_tx = -gJ[2] * v.fx / zs2, g_ty = -gJ[5] * v.fy / zs2;
        float gx = 0, gy = 0;
        if (p.u_free) gx += g_tx; else g_zs += g_tx * p.u;
        if (p.v_free) gy += g_ty; else g_zs += g_ty * p.v;
        // mean2d = (fx x / z_s + cx, fy y / z_s + cy)
        const float gmx = gm2[2 * k], gmy = gm2[2 * k + 1];
        gx += gmx * v.fx / zs;
        gy += gmy * v.fy / zs;
        g_zs -= (gmx * v.fx * p.x + gmy * v.fy * p.y) / zs2;
        const float gz = gdp[k] + (p.z >= fnear ? g_zs : 0.0f);
        // p = R m + t
        for (int j = 0; j < 3; ++j) g_m[j] += v.R[j] * gx + v.R[3 + j] * gy + v.R[6 + j] * gz;
      }
      for (int j = 0; j < 3; ++j) gm[3 * i + j] = g_m[j];
      // RotS = Rot diag(s)
      float gR[9];
      for (int r = 0; r < 3; ++r)
        for (int j = 0; j < 3; ++j) gR[3 * r + j] = g_RotS[3 * r + j] * s[j];
      for (int j = 0; j < 3; ++j)
        gs[3 * i + j] = g_RotS[j] * Rot[j] + g_RotS[3 + j] * Rot[3 + j] + g_RotS[6 + j] * Rot[6 + j];
      // Rot of the unit quaternion (w, x, y, z)
      const float w = unit[0], x = unit[1], y = unit[2], z = unit[3];
      const float gu[4] = {
          2 * (-z * gR[1] + y * gR[2] + z * gR[3] - x * gR[5] - y * gR[6] + x * gR[7]),
          2 * (y * gR[1] + z * gR[2] + y * gR[3] - 2 * x * gR[4] - w * gR[5] + z * gR[6] + w * gR[7] - 2 * x * gR[8]),
          2 * (-2 * y * gR[0] + x * gR[1] + w * gR[2] + x * gR[3] + z * gR[5] - w * gR[6] + z * gR[7] - 2 * y * gR[8]),
          2 * (-2 * z * gR[0] - w * gR[1] + x * gR[2] + w * gR[3] - 2 * z * gR[4] + y * gR[5] + x * gR[6] + y * gR[7])};
      // unit = q / |q|: dq = (gu − unit (unit · gu)) / |q|
      const float dot = w * gu[0] + x * gu[1] + y * gu[2] + z * gu[3];
      for (int j = 0; j < 4; ++j) gq[4 * i + j] = (gu[j] - unit[j] * dot) / norm;
    }
  });
  return {grad_means, grad_quats, grad_scales};
}

}  // namespace

#ifndef CFD_OPS_NAMESPACE
#define CFD_OPS_NAMESPACE cfd_composite_cpu
#endif
// one more macro level, so CFD_OPS_NAMESPACE is expanded before the macro pastes it
#define CFD_TORCH_LIBRARY_FRAGMENT(ns, m) TORCH_LIBRARY_FRAGMENT(ns, m)

CFD_TORCH_LIBRARY_FRAGMENT(CFD_OPS_NAMESPACE, m) {
  m.def(
      "project_forward(Tensor means, Tensor quats, Tensor scales, Tensor opacities, Tensor viewmats, Tensor Ks, "
      "int width, int height, float near, float eps2d, float extent_sigmas, float alpha_min) "
      "-> (Tensor, Tensor, Tensor, Tensor)",
      project_forward);
  m.def(
      "project_backward(Tensor means, Tensor quats, Tensor scales, Tensor viewmats, Tensor Ks, "
      "Tensor grad_means2d, Tensor grad_conics, Tensor grad_depths, int width, int height, float near, "
      "float eps2d) -> (Tensor, Tensor, Tensor)",
      project_backward);
}
