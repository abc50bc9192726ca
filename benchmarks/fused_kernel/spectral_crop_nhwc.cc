// EXPERIMENT, not part of the package: fused CPU kernels for DiffStride's
// separable spectral crop, channels_last. Built and measured by
// benchmarks/fused_kernel_benchmark.py (which compiles it against the
// installed TensorFlow with g++); see the README's Performance section for
// what it showed and why the package does not ship it.
//
// The operator (see diffstride/spectral.py) is, per batch element b,
//   T_b[h] = cols . x_b[h]          cols [2w', W], x_b[h] [W, C]  -> [2w', C]
//   y_b    = rows . T_b             rows [h', 2H], T_b [2H, w' C] -> [h', w' C]
// The TensorFlow-op version writes T (twice the size of x) to memory and reads
// it back; here each batch element is done start to finish while its T_b is
// in cache, and the backward pass recomputes T_b instead of storing it. All
// contractions are "small matrix times a stack of contiguous rows" (the
// channel axis is the contiguous, vectorised one), done by one register-
// blocked micro-kernel written with GCC/Clang vector extensions.
//
// Ops:
//   DiffStrideCropNhwc(x, rows, cols) -> y
//   DiffStrideCropNhwcGrad(x, dy, rows, cols, f_cols, u_rows, g_cols)
//       -> dx [B,H,W,C], g [B, h', 2H], col_prod [B, 2K]
// where g_b = dy_b . T_b^T (the row masks' gradient is a tiny function of
// sum_b g_b) and col_prod holds, per ramp column q, sum(u_b * v_b) with
//   S_b[h] = f_cols . x_b[h], U_b = u_rows . S_b, V_b[i] = g_cols . dy_b[i].

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace diffstride {
namespace {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

#if defined(__AVX512F__)
constexpr int kLanes = 16;
constexpr int kRowBlock = 4;
constexpr int kVecBlock = 4;
#else
constexpr int kLanes = 8;
constexpr int kRowBlock = 4;
constexpr int kVecBlock = 2;
#endif
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec Load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(Vec));
  return v;
}
inline void Store(float* p, const Vec& v) { std::memcpy(p, &v, sizeof(Vec)); }
inline Vec Splat(float a) { return a - Vec{}; }  // Exact: a - 0 == a.
inline float Sum(const Vec& v) {
  float s = 0.0f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

// out[m, n] = sum_k a[m, k] b[k, n] for a block of MB rows and NB vectors.
template <int MB, int NB>
inline void MicroKernel(int k_len, const float* a, int lda, const float* b,
                        int ldb, float* out, int ldo) {
  Vec acc[MB][NB];
  for (int m = 0; m < MB; ++m)
    for (int v = 0; v < NB; ++v) acc[m][v] = Vec{};
  for (int k = 0; k < k_len; ++k) {
    Vec bv[NB];
    for (int v = 0; v < NB; ++v) {
      bv[v] = Load(b + k * ldb + v * kLanes);
      // Keep the row in a register for all MB rows of a (one load, MB FMAs)
      // rather than letting the compiler fold a reload into every FMA.
      __asm__("" : "+v"(bv[v]));
    }
    for (int m = 0; m < MB; ++m) {
      const Vec am = Splat(a[m * lda + k]);
      for (int v = 0; v < NB; ++v) acc[m][v] += am * bv[v];
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int v = 0; v < NB; ++v) Store(out + m * ldo + v * kLanes, acc[m][v]);
}

template <int NB>
inline void RowBlocks(int m_len, int k_len, const float* a, int lda,
                      const float* b, int ldb, float* out, int ldo) {
  int m = 0;
  for (; m + kRowBlock <= m_len; m += kRowBlock)
    MicroKernel<kRowBlock, NB>(k_len, a + m * lda, lda, b, ldb, out + m * ldo,
                               ldo);
  for (; m < m_len; ++m)
    MicroKernel<1, NB>(k_len, a + m * lda, lda, b, ldb, out + m * ldo, ldo);
}

// out [M, N] = a [M, K] (row stride lda) . b [K, N] (row stride ldb).
void SmallGemm(int m_len, int k_len, int n_len, const float* a, int lda,
               const float* b, int ldb, float* out, int ldo) {
  int n = 0;
  for (; n + kVecBlock * kLanes <= n_len; n += kVecBlock * kLanes)
    RowBlocks<kVecBlock>(m_len, k_len, a, lda, b + n, ldb, out + n, ldo);
  for (; n + kLanes <= n_len; n += kLanes)
    RowBlocks<1>(m_len, k_len, a, lda, b + n, ldb, out + n, ldo);
  for (; n < n_len; ++n) {
    for (int m = 0; m < m_len; ++m) {
      float s = 0.0f;
      for (int k = 0; k < k_len; ++k) s += a[m * lda + k] * b[k * ldb + n];
      out[m * ldo + n] = s;
    }
  }
}

// out[m, r] = sum_n a[m, n] b[r, n]: dot products of long rows.
void RowDots(int m_len, int r_len, int n_len, const float* a, const float* b,
             float* out) {
  const int n_vec = n_len - n_len % kLanes;
  for (int m0 = 0; m0 < m_len; m0 += 4) {
    const int mb = std::min(4, m_len - m0);
    for (int r0 = 0; r0 < r_len; r0 += 4) {
      const int rb = std::min(4, r_len - r0);
      Vec acc[4][4];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = Vec{};
      if (mb == 4 && rb == 4) {
        for (int n = 0; n < n_vec; n += kLanes) {
          Vec av[4], bv[4];
          for (int i = 0; i < 4; ++i) av[i] = Load(a + (m0 + i) * n_len + n);
          for (int j = 0; j < 4; ++j) bv[j] = Load(b + (r0 + j) * n_len + n);
          for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
        }
      } else {
        for (int n = 0; n < n_vec; n += kLanes)
          for (int i = 0; i < mb; ++i) {
            const Vec av = Load(a + (m0 + i) * n_len + n);
            for (int j = 0; j < rb; ++j)
              acc[i][j] += av * Load(b + (r0 + j) * n_len + n);
          }
      }
      for (int i = 0; i < mb; ++i)
        for (int j = 0; j < rb; ++j) {
          float s = Sum(acc[i][j]);
          for (int n = n_vec; n < n_len; ++n)
            s += a[(m0 + i) * n_len + n] * b[(r0 + j) * n_len + n];
          out[(m0 + i) * r_len + r0 + j] = s;
        }
    }
  }
}

std::vector<float> Transposed(const float* a, int rows, int cols) {
  std::vector<float> t(static_cast<size_t>(rows) * cols);
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) t[j * rows + i] = a[i * cols + j];
  return t;
}

struct Dims {
  int batch, height, width, chans, out_height, out_width;
};

// Checks x [B,H,W,C], rows [h', 2H], cols [2w', W]; fills dims.
::tensorflow::Status CheckOperands(const Tensor& x, const Tensor& rows,
                                   const Tensor& cols, Dims* d) {
  if (x.dims() != 4)
    return InvalidArgument("x must be [B, H, W, C], got rank ", x.dims());
  d->batch = x.dim_size(0);
  d->height = x.dim_size(1);
  d->width = x.dim_size(2);
  d->chans = x.dim_size(3);
  if (rows.dims() != 2 || rows.dim_size(1) != 2 * d->height)
    return InvalidArgument("rows must be [h', 2H]");
  if (cols.dims() != 2 || cols.dim_size(1) != d->width ||
      cols.dim_size(0) % 2 != 0)
    return InvalidArgument("cols must be [2w', W]");
  d->out_height = rows.dim_size(0);
  d->out_width = cols.dim_size(0) / 2;
  return ::tensorflow::OkStatus();
}

// T_b [H, 2w', C] = cols . x_b[h] for every row h.
void WidthStage(const Dims& d, const float* cols, const float* x_b,
                float* t_b) {
  const int k2 = 2 * d.out_width;
  for (int h = 0; h < d.height; ++h)
    SmallGemm(k2, d.width, d.chans, cols, d.width,
              x_b + static_cast<int64_t>(h) * d.width * d.chans, d.chans,
              t_b + static_cast<int64_t>(h) * k2 * d.chans, d.chans);
}

void Parallel(OpKernelContext* ctx, int64_t items, int64_t cost,
              const std::function<void(int64_t, int64_t)>& fn) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads();
  ::tensorflow::Shard(pool->num_threads, pool->workers, items, cost, fn);
}

class CropOp : public OpKernel {
 public:
  explicit CropOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& rows = ctx->input(1);
    const Tensor& cols = ctx->input(2);
    Dims d;
    OP_REQUIRES_OK(ctx, CheckOperands(x, rows, cols, &d));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0,
                            TensorShape({d.batch, d.out_height, d.out_width,
                                         d.chans}),
                            &y));
    const int64_t in_size = int64_t{d.height} * d.width * d.chans;
    const int64_t row_len = int64_t{d.out_width} * d.chans;
    const int64_t t_size = 2 * int64_t{d.height} * row_len;
    const float* xp = x.flat<float>().data();
    const float* rp = rows.flat<float>().data();
    const float* cp = cols.flat<float>().data();
    float* yp = y->flat<float>().data();
    const int64_t cost = 2 * t_size * (d.width + d.out_height);
    Parallel(ctx, d.batch, cost, [&](int64_t start, int64_t end) {
      std::vector<float> t_b(t_size);
      for (int64_t b = start; b < end; ++b) {
        WidthStage(d, cp, xp + b * in_size, t_b.data());
        SmallGemm(d.out_height, 2 * d.height, row_len, rp, 2 * d.height,
                  t_b.data(), row_len, yp + b * d.out_height * row_len,
                  row_len);
      }
    });
  }
};

class CropGradOp : public OpKernel {
 public:
  explicit CropGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& dy = ctx->input(1);
    const Tensor& rows = ctx->input(2);
    const Tensor& cols = ctx->input(3);
    const Tensor& f_cols = ctx->input(4);
    const Tensor& u_rows = ctx->input(5);
    const Tensor& g_cols = ctx->input(6);
    Dims d;
    OP_REQUIRES_OK(ctx, CheckOperands(x, rows, cols, &d));
    OP_REQUIRES(ctx,
                dy.dims() == 4 && dy.dim_size(0) == d.batch &&
                    dy.dim_size(1) == d.out_height &&
                    dy.dim_size(2) == d.out_width &&
                    dy.dim_size(3) == d.chans,
                InvalidArgument("dy must be [B, h', w', C]"));
    OP_REQUIRES(ctx,
                f_cols.dims() == 2 && f_cols.dim_size(1) == d.width &&
                    f_cols.dim_size(0) % 2 == 0,
                InvalidArgument("f_cols must be [2K, W]"));
    const int k2 = f_cols.dim_size(0);  // 2K ramp columns (re, im).
    const int num_k = k2 / 2;
    OP_REQUIRES(ctx,
                u_rows.dims() == 2 && u_rows.dim_size(0) == 2 * d.out_height &&
                    u_rows.dim_size(1) == 2 * d.height,
                InvalidArgument("u_rows must be [2h', 2H]"));
    OP_REQUIRES(ctx,
                g_cols.dims() == 2 && g_cols.dim_size(0) == k2 &&
                    g_cols.dim_size(1) == d.out_width,
                InvalidArgument("g_cols must be [2K, w']"));
    Tensor *dx = nullptr, *g = nullptr, *col_prod = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            1,
                            TensorShape({d.batch, d.out_height,
                                         2 * d.height}),
                            &g));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            2, TensorShape({d.batch, k2}), &col_prod));

    const int64_t in_size = int64_t{d.height} * d.width * d.chans;
    const int64_t row_len = int64_t{d.out_width} * d.chans;
    const int64_t out_size = int64_t{d.out_height} * row_len;
    const int64_t t_size = 2 * int64_t{d.height} * row_len;
    const int cw2 = 2 * d.out_width;
    const std::vector<float> rows_t =
        Transposed(rows.flat<float>().data(), d.out_height, 2 * d.height);
    const std::vector<float> cols_t =
        Transposed(cols.flat<float>().data(), cw2, d.width);
    const float* xp = x.flat<float>().data();
    const float* dyp = dy.flat<float>().data();
    const float* cp = cols.flat<float>().data();
    const float* fp = f_cols.flat<float>().data();
    const float* up = u_rows.flat<float>().data();
    const float* gp = g_cols.flat<float>().data();
    float* dxp = dx->flat<float>().data();
    float* g_out = g->flat<float>().data();
    float* cp_out = col_prod->flat<float>().data();
    const int64_t cost = 2 * t_size * (2 * d.width + 3 * d.out_height);
    Parallel(ctx, d.batch, cost, [&](int64_t start, int64_t end) {
      std::vector<float> t_b(t_size), dt_b(t_size);
      std::vector<float> s_b(int64_t{d.height} * k2 * d.chans);
      std::vector<float> u_b(int64_t{d.out_height} * k2 * d.chans);
      std::vector<float> v_b(int64_t{d.out_height} * k2 * d.chans);
      for (int64_t b = start; b < end; ++b) {
        const float* x_b = xp + b * in_size;
        const float* dy_b = dyp + b * out_size;
        float* dx_b = dxp + b * in_size;
        // dx: the adjoint, rows then width.
        SmallGemm(2 * d.height, d.out_height, row_len, rows_t.data(),
                  d.out_height, dy_b, row_len, dt_b.data(), row_len);
        for (int h = 0; h < d.height; ++h)
          SmallGemm(d.width, cw2, d.chans, cols_t.data(), cw2,
                    dt_b.data() + int64_t{h} * cw2 * d.chans, d.chans,
                    dx_b + int64_t{h} * d.width * d.chans, d.chans);
        // Row masks: g_b = dy_b . T_b^T, T_b recomputed from x_b.
        WidthStage(d, cp, x_b, t_b.data());
        RowDots(d.out_height, 2 * d.height, row_len, dy_b, t_b.data(),
                g_out + b * d.out_height * 2 * d.height);
        // Column masks: sum(U_b * V_b) per ramp column.
        float* prod = cp_out + b * k2;
        std::fill(prod, prod + k2, 0.0f);
        if (num_k == 0) continue;
        for (int h = 0; h < d.height; ++h)
          SmallGemm(k2, d.width, d.chans, fp, d.width,
                    x_b + int64_t{h} * d.width * d.chans, d.chans,
                    s_b.data() + int64_t{h} * k2 * d.chans, d.chans);
        SmallGemm(2 * d.out_height, 2 * d.height, num_k * d.chans, up,
                  2 * d.height, s_b.data(), num_k * d.chans, u_b.data(),
                  num_k * d.chans);
        for (int i = 0; i < d.out_height; ++i)
          SmallGemm(k2, d.out_width, d.chans, gp, d.out_width,
                    dy_b + int64_t{i} * row_len, d.chans,
                    v_b.data() + int64_t{i} * k2 * d.chans, d.chans);
        for (int i = 0; i < d.out_height; ++i)
          for (int q = 0; q < k2; ++q) {
            const float* uu = u_b.data() + (int64_t{i} * k2 + q) * d.chans;
            const float* vv = v_b.data() + (int64_t{i} * k2 + q) * d.chans;
            float s = 0.0f;
            for (int c = 0; c < d.chans; ++c) s += uu[c] * vv[c];
            prod[q] += s;
          }
      }
    });
  }
};

}  // namespace

REGISTER_OP("DiffStrideCropNhwc")
    .Input("x: float")
    .Input("rows: float")
    .Input("cols: float")
    .Output("y: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x, rows, cols;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &rows));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 2, &cols));
      DimensionHandle out_w;
      TF_RETURN_IF_ERROR(c->Divide(c->Dim(cols, 0), 2, true, &out_w));
      c->set_output(0, c->MakeShape({c->Dim(x, 0), c->Dim(rows, 0), out_w,
                                     c->Dim(x, 3)}));
      return ::tensorflow::OkStatus();
    });

REGISTER_OP("DiffStrideCropNhwcGrad")
    .Input("x: float")
    .Input("dy: float")
    .Input("rows: float")
    .Input("cols: float")
    .Input("f_cols: float")
    .Input("u_rows: float")
    .Input("g_cols: float")
    .Output("dx: float")
    .Output("g: float")
    .Output("col_prod: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x, rows, f_cols;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 2, &rows));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 2, &f_cols));
      DimensionHandle two_h;
      TF_RETURN_IF_ERROR(c->Multiply(c->Dim(x, 1), 2, &two_h));
      c->set_output(0, x);
      c->set_output(1, c->MakeShape({c->Dim(x, 0), c->Dim(rows, 0), two_h}));
      c->set_output(2, c->MakeShape({c->Dim(x, 0), c->Dim(f_cols, 0)}));
      return ::tensorflow::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("DiffStrideCropNhwc").Device(DEVICE_CPU),
                        CropOp);
REGISTER_KERNEL_BUILDER(Name("DiffStrideCropNhwcGrad").Device(DEVICE_CPU),
                        CropGradOp);

}  // namespace diffstride
