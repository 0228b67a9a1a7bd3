// CPU 2-d convolution (NCHW), variants selected by ConvVariant.
//
// Direct (the oracle): one output value per innermost loop nest, accumulated in float64.
//   forward and backward-data gather (each output element is owned by one iteration, no scatter),
//   OpenMP over (image, channel) pairs; backward-weight: OpenMP over (Cout, Cin) pairs, each
//   summing over the batch and all output positions.
// Im2col / Im2colBatch (the fast path): per image n,
//   forward          col = im2col(x[n]) [K, P];  y[n] [Cout, P] = w [Cout, K] . col
//   backward-data    col = w^T . dy[n];           dx[n] += col2im(col)
//   backward-weight  dw [Cout, K] += dy[n] [Cout, P] . col^T
//   with K = Cin*KH*KW, P = OH*OW and the products done by cpu::gemm. A 1x1 stride-1 unpadded
//   convolution uses x[n] / dx[n] as col directly (no unfold).
//   Im2col: images one after another, all the parallelism inside gemm (and, when gemm shares the
//     OpenMP threads, inside im2col/col2im too). With a pthreads OpenBLAS the Im2col path runs
//     no OpenMP loop at all: libgomp's threads, spin-waiting after a region, take the cores
//     OpenBLAS's threads need next (measured 5-30x slower on 2 cores).
//   Im2colBatch: OpenMP over images, one col buffer per thread, gemm running serially inside
//     (the Blocked kernel, or OpenBLAS's OpenMP build, which does not nest). backward-weight
//     gives each thread one contiguous chunk of images and its own partial dw, then adds the
//     partials in chunk order: deterministic for a given thread count.
//   Auto: Im2colBatch when gemm shares the OpenMP threads (cpu::gemm_shares_openmp) and there
//     are at least as many images as threads, else Im2col. (Each image's gemm is small: the
//     ViT's patch embedding is [96, 48] x [48, 64] per image, too small to split across threads.)
#include "kernels/cpu/conv2d.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/matmul.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace clipcu::cpu {

const char* conv_variant_name(ConvVariant v) {
  switch (v) {
    case ConvVariant::Auto:
      return "Auto";
    case ConvVariant::Direct:
      return "Direct";
    case ConvVariant::Im2col:
      return "Im2col";
    case ConvVariant::Im2colBatch:
      return "Im2colBatch";
  }
  return "?";
}

Conv2dDims conv2d_dims(int64_t N, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int64_t KH, int64_t KW,
                       int64_t stride, int64_t padding) {
  Conv2dDims d;
  d.N = N, d.Cin = Cin, d.H = H, d.W = W, d.Cout = Cout, d.KH = KH, d.KW = KW;
  d.stride = stride, d.padding = padding;
  d.OH = (H + 2 * padding - KH) / stride + 1;
  d.OW = (W + 2 * padding - KW) / stride + 1;
  return d;
}

namespace {

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Output positions o in [lo, hi) are those whose input index o*s - p + k falls inside [0, L).
void valid_range(int64_t O, int64_t L, int64_t s, int64_t p, int64_t k, int64_t* lo, int64_t* hi) {
  int64_t a = p - k;          // o*s >= a
  int64_t b = L - 1 + p - k;  // o*s <= b
  *lo = a <= 0 ? 0 : (a + s - 1) / s;
  *hi = b < 0 ? 0 : std::min(O, b / s + 1);
  if (*lo > *hi) *lo = *hi;
}

// Below this much work (multiply-adds or elements touched) a loop runs serially: starting and
// joining a team costs more than it saves, and far more on a loaded machine.
constexpr int64_t kMinParallelWork = 1 << 16;
int64_t conv_work(const Conv2dDims& d) { return d.N * d.Cout * d.OH * d.OW * d.Cin * d.KH * d.KW; }

bool is_pointwise(const Conv2dDims& d) { return d.KH == 1 && d.KW == 1 && d.stride == 1 && d.padding == 0; }

// OpenMP loops in the Im2col path only when gemm runs on OpenMP too (see the file comment).
bool gemm_is_openmp() { return gemm_shares_openmp(); }

// Inside the batch-parallel loop gemm must not start threads of its own: the Blocked kernel and
// OpenBLAS's OpenMP build run serially there (nested OpenMP regions are off). Im2colBatch is
// chosen by Auto only then; forced with a pthreads OpenBLAS it keeps the Blocked kernel.
GemmVariant gemm_inside(bool batch) {
  return batch && !gemm_shares_openmp() ? GemmVariant::Blocked : GemmVariant::Auto;
}

ConvVariant resolve(ConvVariant v, const Conv2dDims& d) {
  if (v != ConvVariant::Auto) return v;
  const int t = max_threads();
  return gemm_is_openmp() && t > 1 && d.N >= t ? ConvVariant::Im2colBatch : ConvVariant::Im2col;
}

// ------------------------------------------------------------------ Direct (oracle)
template <class T>
void forward_direct(const Conv2dDims& d, const T* x, const T* w, const T* bias, T* y) {
  const int64_t HW = d.H * d.W, P = d.OH * d.OW, CKK = d.Cin * d.KH * d.KW;
#pragma omp parallel for collapse(2) schedule(static) if (conv_work(d) > kMinParallelWork)
  for (int64_t n = 0; n < d.N; ++n) {
    for (int64_t co = 0; co < d.Cout; ++co) {
      const T* xn = x + n * d.Cin * HW;
      const T* wc = w + co * CKK;
      T* yc = y + (n * d.Cout + co) * P;
      for (int64_t oh = 0; oh < d.OH; ++oh) {
        for (int64_t ow = 0; ow < d.OW; ++ow) {
          double acc = bias ? double(bias[co]) : 0.0;
          for (int64_t ci = 0; ci < d.Cin; ++ci) {
            for (int64_t kh = 0; kh < d.KH; ++kh) {
              int64_t ih = oh * d.stride - d.padding + kh;
              if (ih < 0 || ih >= d.H) continue;
              for (int64_t kw = 0; kw < d.KW; ++kw) {
                int64_t iw = ow * d.stride - d.padding + kw;
                if (iw < 0 || iw >= d.W) continue;
                acc += double(wc[(ci * d.KH + kh) * d.KW + kw]) * double(xn[ci * HW + ih * d.W + iw]);
              }
            }
          }
          yc[oh * d.OW + ow] = T(acc);
        }
      }
    }
  }
}

template <class T>
void backward_data_direct(const Conv2dDims& d, const T* dy, const T* w, T* dx) {
  const int64_t HW = d.H * d.W, P = d.OH * d.OW, KK = d.KH * d.KW;
#pragma omp parallel for collapse(2) schedule(static) if (conv_work(d) > kMinParallelWork)
  for (int64_t n = 0; n < d.N; ++n) {
    for (int64_t ci = 0; ci < d.Cin; ++ci) {
      T* dxc = dx + (n * d.Cin + ci) * HW;
      const T* dyn = dy + n * d.Cout * P;
      for (int64_t ih = 0; ih < d.H; ++ih) {
        for (int64_t iw = 0; iw < d.W; ++iw) {
          double acc = 0.0;
          for (int64_t co = 0; co < d.Cout; ++co) {
            const T* wk = w + (co * d.Cin + ci) * KK;
            for (int64_t kh = 0; kh < d.KH; ++kh) {
              int64_t th = ih + d.padding - kh;  // = oh * stride
              if (th < 0 || th % d.stride != 0 || th / d.stride >= d.OH) continue;
              int64_t oh = th / d.stride;
              for (int64_t kw = 0; kw < d.KW; ++kw) {
                int64_t tw = iw + d.padding - kw;
                if (tw < 0 || tw % d.stride != 0 || tw / d.stride >= d.OW) continue;
                acc += double(wk[kh * d.KW + kw]) * double(dyn[co * P + oh * d.OW + tw / d.stride]);
              }
            }
          }
          dxc[ih * d.W + iw] += T(acc);
        }
      }
    }
  }
}

template <class T>
void backward_weight_direct(const Conv2dDims& d, const T* x, const T* dy, T* dw, T* dbias) {
  const int64_t HW = d.H * d.W, P = d.OH * d.OW, KK = d.KH * d.KW;
  if (dw) {
#pragma omp parallel for collapse(2) schedule(static) if (conv_work(d) > kMinParallelWork)
    for (int64_t co = 0; co < d.Cout; ++co) {
      for (int64_t ci = 0; ci < d.Cin; ++ci) {
        for (int64_t kh = 0; kh < d.KH; ++kh) {
          for (int64_t kw = 0; kw < d.KW; ++kw) {
            double acc = 0.0;
            for (int64_t n = 0; n < d.N; ++n) {
              const T* xc = x + (n * d.Cin + ci) * HW;
              const T* dyc = dy + (n * d.Cout + co) * P;
              for (int64_t oh = 0; oh < d.OH; ++oh) {
                int64_t ih = oh * d.stride - d.padding + kh;
                if (ih < 0 || ih >= d.H) continue;
                for (int64_t ow = 0; ow < d.OW; ++ow) {
                  int64_t iw = ow * d.stride - d.padding + kw;
                  if (iw < 0 || iw >= d.W) continue;
                  acc += double(dyc[oh * d.OW + ow]) * double(xc[ih * d.W + iw]);
                }
              }
            }
            dw[(co * d.Cin + ci) * KK + kh * d.KW + kw] += T(acc);
          }
        }
      }
    }
  }
  if (dbias) {
#pragma omp parallel for schedule(static) if (d.N * d.Cout * P > kMinParallelWork)
    for (int64_t co = 0; co < d.Cout; ++co) {
      double acc = 0.0;
      for (int64_t n = 0; n < d.N; ++n) {
        const T* dyc = dy + (n * d.Cout + co) * P;
        for (int64_t i = 0; i < P; ++i) acc += double(dyc[i]);
      }
      dbias[co] += T(acc);
    }
  }
}

// ------------------------------------------------------------------ Im2col (fast path)
template <class T>
void forward_im2col(const Conv2dDims& d, const T* x, const T* w, const T* bias, T* y, bool batch) {
  const GemmVariant gv = gemm_inside(batch);
  const int64_t K = d.Cin * d.KH * d.KW, P = d.OH * d.OW;
  const bool pointwise = is_pointwise(d);
  auto one = [&](int64_t n, T* col) {
    const T* xn = x + n * d.Cin * d.H * d.W;
    const T* c = xn;
    if (!pointwise) {
      im2col(d, xn, col);
      c = col;
    }
    T* yn = y + n * d.Cout * P;
    gemm<T>(false, false, d.Cout, P, K, T(1), w, c, T(0), yn, gv);
    if (bias) {
      for (int64_t co = 0; co < d.Cout; ++co) {
        T b = bias[co];
        T* yc = yn + co * P;
        for (int64_t i = 0; i < P; ++i) yc[i] += b;
      }
    }
  };
  const size_t col_size = pointwise ? 0 : size_t(K * P);
  if (batch) {
#pragma omp parallel if (conv_work(d) > kMinParallelWork)
    {
      std::vector<T> col(col_size);
#pragma omp for schedule(static)
      for (int64_t n = 0; n < d.N; ++n) one(n, col.data());
    }
  } else {
    std::vector<T> col(col_size);
    for (int64_t n = 0; n < d.N; ++n) one(n, col.data());
  }
}

template <class T>
void backward_data_im2col(const Conv2dDims& d, const T* dy, const T* w, T* dx, bool batch) {
  const GemmVariant gv = gemm_inside(batch);
  const int64_t K = d.Cin * d.KH * d.KW, P = d.OH * d.OW;
  const bool pointwise = is_pointwise(d);
  auto one = [&](int64_t n, T* col) {
    const T* dyn = dy + n * d.Cout * P;
    T* dxn = dx + n * d.Cin * d.H * d.W;
    if (pointwise) {  // dx[n] [Cin, HW] += w^T [Cin, Cout] . dy[n] [Cout, HW]
      gemm<T>(true, false, K, P, d.Cout, T(1), w, dyn, T(1), dxn, gv);
    } else {
      gemm<T>(true, false, K, P, d.Cout, T(1), w, dyn, T(0), col, gv);
      col2im(d, col, dxn);
    }
  };
  const size_t col_size = pointwise ? 0 : size_t(K * P);
  if (batch) {
#pragma omp parallel if (conv_work(d) > kMinParallelWork)
    {
      std::vector<T> col(col_size);
#pragma omp for schedule(static)
      for (int64_t n = 0; n < d.N; ++n) one(n, col.data());
    }
  } else {
    std::vector<T> col(col_size);
    for (int64_t n = 0; n < d.N; ++n) one(n, col.data());
  }
}

template <class T>
void backward_weight_im2col(const Conv2dDims& d, const T* x, const T* dy, T* dw, T* dbias, bool batch) {
  const GemmVariant gv = gemm_inside(batch);
  const int64_t K = d.Cin * d.KH * d.KW, P = d.OH * d.OW;
  const bool pointwise = is_pointwise(d);
  if (dw) {
    // dw_target [Cout, K] += sum over images [n0, n1) of dy[n] . col(n)^T
    auto chunk = [&](int64_t n0, int64_t n1, T* col, T* dw_target) {
      for (int64_t n = n0; n < n1; ++n) {
        const T* xn = x + n * d.Cin * d.H * d.W;
        const T* c = xn;
        if (!pointwise) {
          im2col(d, xn, col);
          c = col;
        }
        gemm<T>(false, true, d.Cout, K, P, T(1), dy + n * d.Cout * P, c, T(1), dw_target, gv);
      }
    };
    const size_t col_size = pointwise ? 0 : size_t(K * P);
    if (batch) {
      const int64_t chunks = std::min<int64_t>(d.N, max_threads());
      const size_t wsize = size_t(d.Cout * K);
      // chunk 0 accumulates straight into dw; the others into zeroed partials added afterwards
      std::vector<T> partial(size_t(chunks - 1) * wsize, T(0));
#pragma omp parallel num_threads(int(chunks)) if (conv_work(d) > kMinParallelWork)
      {
        std::vector<T> col(col_size);
#pragma omp for schedule(static, 1)
        for (int64_t c = 0; c < chunks; ++c) {
          T* target = c == 0 ? dw : partial.data() + size_t(c - 1) * wsize;
          chunk(d.N * c / chunks, d.N * (c + 1) / chunks, col.data(), target);
        }
      }
#pragma omp parallel for schedule(static) if (int64_t(wsize) * chunks > kMinParallelWork)
      for (int64_t i = 0; i < int64_t(wsize); ++i) {
        T acc = dw[i];
        for (int64_t c = 1; c < chunks; ++c) acc += partial[size_t(c - 1) * wsize + size_t(i)];
        dw[i] = acc;
      }
    } else {
      std::vector<T> col(col_size);
      chunk(0, d.N, col.data(), dw);
    }
  }
  if (dbias) {
#pragma omp parallel for schedule(static) if ((batch || gemm_is_openmp()) && d.N * d.Cout * P > kMinParallelWork)
    for (int64_t co = 0; co < d.Cout; ++co) {
      double acc = 0.0;
      for (int64_t n = 0; n < d.N; ++n) {
        const T* dyc = dy + (n * d.Cout + co) * P;
        for (int64_t i = 0; i < P; ++i) acc += double(dyc[i]);
      }
      dbias[co] += T(acc);
    }
  }
}

}  // namespace

template <class T>
void im2col(const Conv2dDims& d, const T* x, T* col) {
  const int64_t P = d.OH * d.OW, KK = d.KH * d.KW, rows = d.Cin * KK;
  const int64_t s = d.stride, p = d.padding;
#pragma omp parallel for schedule(static) if (gemm_is_openmp() && rows * P > kMinParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t ci = r / KK, kh = (r / d.KW) % d.KH, kw = r % d.KW;
    const T* xc = x + ci * d.H * d.W;
    T* crow = col + r * P;
    int64_t lo, hi;
    valid_range(d.OW, d.W, s, p, kw, &lo, &hi);
    for (int64_t oh = 0; oh < d.OH; ++oh) {
      T* out = crow + oh * d.OW;
      const int64_t ih = oh * s - p + kh;
      if (ih < 0 || ih >= d.H) {
        std::fill(out, out + d.OW, T(0));
        continue;
      }
      const T* xr = xc + ih * d.W;
      const int64_t shift = kw - p;  // out[ow] = xr[ow*s + shift], inside the row for ow in [lo, hi)
      std::fill(out, out + lo, T(0));
      if (s == 1) {
        if (hi > lo) std::memcpy(out + lo, xr + lo + shift, size_t(hi - lo) * sizeof(T));
      } else {
        for (int64_t ow = lo; ow < hi; ++ow) out[ow] = xr[ow * s + shift];
      }
      std::fill(out + hi, out + d.OW, T(0));
    }
  }
}

template <class T>
void col2im(const Conv2dDims& d, const T* col, T* dx) {
  const int64_t P = d.OH * d.OW, KK = d.KH * d.KW;
  const int64_t s = d.stride, p = d.padding;
  // One channel per iteration: the rows of a channel all land in dx[ci], added in (kh, kw) order.
#pragma omp parallel for schedule(static) if (gemm_is_openmp() && d.Cin * KK * P > kMinParallelWork)
  for (int64_t ci = 0; ci < d.Cin; ++ci) {
    T* dxc = dx + ci * d.H * d.W;
    for (int64_t kh = 0; kh < d.KH; ++kh) {
      for (int64_t kw = 0; kw < d.KW; ++kw) {
        const T* crow = col + ((ci * d.KH + kh) * d.KW + kw) * P;
        int64_t lo, hi;
        valid_range(d.OW, d.W, s, p, kw, &lo, &hi);
        for (int64_t oh = 0; oh < d.OH; ++oh) {
          const int64_t ih = oh * s - p + kh;
          if (ih < 0 || ih >= d.H) continue;
          T* xr = dxc + ih * d.W;
          const T* in = crow + oh * d.OW;
          const int64_t shift = kw - p;
          for (int64_t ow = lo; ow < hi; ++ow) xr[ow * s + shift] += in[ow];
        }
      }
    }
  }
}

template <class T>
void conv2d_forward(const Conv2dDims& d, const T* x, const T* w, const T* bias, T* y, ConvVariant variant) {
  if (d.N == 0 || d.Cout == 0 || d.OH <= 0 || d.OW <= 0) return;
  variant = resolve(variant, d);
  if (variant == ConvVariant::Direct) {
    forward_direct(d, x, w, bias, y);
  } else {
    forward_im2col(d, x, w, bias, y, variant == ConvVariant::Im2colBatch);
  }
}

template <class T>
void conv2d_backward_data(const Conv2dDims& d, const T* dy, const T* w, T* dx, ConvVariant variant) {
  if (d.N == 0 || d.Cin == 0 || d.OH <= 0 || d.OW <= 0) return;
  variant = resolve(variant, d);
  if (variant == ConvVariant::Direct) {
    backward_data_direct(d, dy, w, dx);
  } else {
    backward_data_im2col(d, dy, w, dx, variant == ConvVariant::Im2colBatch);
  }
}

template <class T>
void conv2d_backward_weight(const Conv2dDims& d, const T* x, const T* dy, T* dw, T* dbias, ConvVariant variant) {
  if (d.N == 0 || d.OH <= 0 || d.OW <= 0) return;
  variant = resolve(variant, d);
  if (variant == ConvVariant::Direct) {
    backward_weight_direct(d, x, dy, dw, dbias);
  } else {
    backward_weight_im2col(d, x, dy, dw, dbias, variant == ConvVariant::Im2colBatch);
  }
}

#define CLIPCU_INSTANTIATE_CONV(T)                                                                     \
  template void conv2d_forward<T>(const Conv2dDims&, const T*, const T*, const T*, T*, ConvVariant);   \
  template void conv2d_backward_data<T>(const Conv2dDims&, const T*, const T*, T*, ConvVariant);       \
  template void conv2d_backward_weight<T>(const Conv2dDims&, const T*, const T*, T*, T*, ConvVariant); \
  template void im2col<T>(const Conv2dDims&, const T*, T*);                                            \
  template void col2im<T>(const Conv2dDims&, const T*, T*);
CLIPCU_INSTANTIATE_CONV(float)
CLIPCU_INSTANTIATE_CONV(double)
#undef CLIPCU_INSTANTIATE_CONV

}  // namespace clipcu::cpu
