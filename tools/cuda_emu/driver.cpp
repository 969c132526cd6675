// SPDX-License-Identifier: MIT
// Checks fastnn's CUDA kernels, run by the CPU emulation (run.sh), against naive double
// references. Prints each failure; exits non-zero when any check fails.
#include <cuda_runtime.h>
#include <cstdio>
#include <random>
#include <vector>
#include "common.h"
#include "cuda/kernels.h"
using namespace fastnn;
namespace cu = fastnn::cuda;

static int failures = 0, checks = 0;
static std::mt19937_64 gen(42);
template <class T> std::vector<T> randv(size_t n) {
  std::normal_distribution<double> d; std::vector<T> v(n); for (auto& x : v) x = T(d(gen)); return v;
}
#define CHECK(cond, ...) do { ++checks; if (!(cond)) { ++failures; std::printf("FAIL %s:%d ", __FILE__, __LINE__); std::printf(__VA_ARGS__); std::printf("\n"); } } while (0)

template <class T> double tol_for(int64_t K) { return (std::is_same_v<T, float> ? 1e-5 : 1e-12) * (K + 2) * 4; }

// A view over a buffer: rows x cols with strides (rs, cs), base offset.
template <class T> Matrix<T> view(std::vector<T>& buf, int64_t off, int64_t r, int64_t c, int64_t rs, int64_t cs) {
  return {buf.data() + off, r, c, rs, cs};
}
template <class T> Matrix<const T> cv(Matrix<T> m) { return {m.data, m.rows, m.cols, m.rs, m.cs}; }

template <class T>
void test_gemm(int64_t M, int64_t N, int64_t K, bool ta, bool tb, int layout, T alpha, T beta) {
  // layout 0: contiguous; 1: column step 2; 2: reversed rows; 3: Fortran order
  auto make = [&](int64_t r, int64_t c, std::vector<T>& buf) -> Matrix<T> {
    // exactly the elements the view spans: ASan flags any read or write outside it
    const int64_t span = r * c == 0 ? 1 : (layout == 1 ? (r - 1) * 2 * c + 2 * (c - 1) + 1 : r * c);
    buf = randv<T>(size_t(span));
    switch (layout) {
      case 1: return view(buf, 0, r, c, 2 * c, 2);
      case 2: return view(buf, (r - 1) * c > 0 ? (r - 1) * c : 0, r, c, -c, 1);
      case 3: return view(buf, 0, r, c, 1, r);
      case 4: return view(buf, 0, r, c, 0, 1);  // broadcast rows (read-only use)
      default: return view(buf, 0, r, c, c, 1);
    }
  };
  std::vector<T> ba, bb, bc;
  Matrix<T> A = make(ta ? K : M, ta ? M : K, ba), B = make(tb ? N : K, tb ? K : N, bb);
  const int saved = layout;
  if (layout == 4) layout = 0;  // C is written: never a broadcast view
  Matrix<T> C = make(M, N, bc);
  layout = saved;
  if (beta == T(0)) for (int64_t i = 0; i < M; ++i) for (int64_t j = 0; j < N; ++j) C(i, j) = std::numeric_limits<T>::quiet_NaN();
  std::vector<double> ref(size_t(M * N)), mag(size_t(M * N));
  for (int64_t i = 0; i < M; ++i) for (int64_t j = 0; j < N; ++j) {
    double s = 0, m = 0;
    for (int64_t k = 0; k < K; ++k) {
      double a = ta ? A(k, i) : A(i, k), b = tb ? B(j, k) : B(k, j);
      s += a * b; m += std::abs(a * b);
    }
    ref[i * N + j] = alpha * s + (beta != T(0) ? beta * double(C(i, j)) : 0.0);
    mag[i * N + j] = std::abs(alpha) * m + (beta != T(0) ? std::abs(beta * double(C(i, j))) : 0.0);
  }
  cu::gemm<T>(ta, tb, alpha, cv(A), cv(B), beta, C, false, nullptr);
  int bad = 0; double worst = 0;
  for (int64_t i = 0; i < M; ++i) for (int64_t j = 0; j < N; ++j) {
    double e = std::abs(double(C(i, j)) - ref[i * N + j]);
    if (!(e <= tol_for<T>(K) * mag[i * N + j] + 1e-30)) { ++bad; worst = std::max(worst, e); }
  }
  CHECK(bad == 0, "gemm<%s> M=%ld N=%ld K=%ld ta=%d tb=%d layout=%d alpha=%g beta=%g: %d bad, worst %g",
        sizeof(T) == 4 ? "f" : "d", M, N, K, ta, tb, layout, double(alpha), double(beta), bad, worst);
}

template <class T> void test_dense(int64_t n, int64_t b, int64_t fin, int64_t fout, bool rows_on) {
  auto x = randv<T>(n * fin), w = randv<T>(fout * fin), bias = randv<T>(fout), dy = randv<T>(b * fout);
  std::vector<int64_t> rows(b); for (auto& r : rows) r = int64_t(gen() % n);
  std::vector<T> y(b * fout);
  Matrix<T> X{x.data(), n, fin, fin, 1}, W{w.data(), fout, fin, fin, 1};
  auto xr = [&](int64_t i) { return rows_on ? rows[i] : i; };
  cu::dense_forward<T>({y.data(), b, fout, fout, 1}, cv(X), cv(W), {bias.data(), fout, 1}, true, rows_on ? rows.data() : nullptr, nullptr);
  int bad = 0;
  for (int64_t i = 0; i < b; ++i) for (int64_t o = 0; o < fout; ++o) {
    double s = bias[o]; for (int64_t k = 0; k < fin; ++k) s += double(X(xr(i), k)) * W(o, k);
    s = s > 0 ? s : 0;
    if (std::abs(y[i * fout + o] - s) > tol_for<T>(fin) * 10 * (1 + std::abs(s))) ++bad;
  }
  CHECK(bad == 0, "dense_forward b=%ld rows=%d: %d bad", b, rows_on, bad);
  auto dw0 = randv<T>(fout * fin), db0 = randv<T>(fout);
  std::vector<T> dx(b * fin), dw = dw0, db = db0;
  cu::dense_backward<T>({dx.data(), b, fin, fin, 1}, {dw.data(), fout, fin, fin, 1}, {db.data(), fout, 1},
                        {dy.data(), b, fout, fout, 1}, cv(X), cv(W), true, rows_on ? rows.data() : nullptr, nullptr);
  int bx = 0, bw = 0, bb = 0;
  for (int64_t i = 0; i < b; ++i) for (int64_t k = 0; k < fin; ++k) {
    double s = 0; for (int64_t o = 0; o < fout; ++o) s += double(dy[i * fout + o]) * W(o, k);
    if (std::abs(dx[i * fin + k] - s) > tol_for<T>(fout) * 10 * (1 + std::abs(s))) ++bx;
  }
  for (int64_t o = 0; o < fout; ++o) {
    for (int64_t k = 0; k < fin; ++k) {
      double s = dw0[o * fin + k]; for (int64_t i = 0; i < b; ++i) s += double(dy[i * fout + o]) * X(xr(i), k);
      if (std::abs(dw[o * fin + k] - s) > tol_for<T>(b) * 10 * (1 + std::abs(s))) ++bw;
    }
    double s = db0[o]; for (int64_t i = 0; i < b; ++i) s += dy[i * fout + o];
    if (std::abs(db[o] - s) > tol_for<T>(b) * (1 + std::abs(s))) ++bb;
  }
  CHECK(bx + bw + bb == 0, "dense_backward b=%ld rows=%d: dx %d dw %d db %d bad", b, rows_on, bx, bw, bb);
}

template <class T> void test_elementwise(int64_t r, int64_t c, bool strided) {
  auto x = randv<T>(r * c * 2 + 4), dy = randv<T>(r * c * 2 + 4);
  x[0] = std::numeric_limits<T>::quiet_NaN(); x[1] = 0;
  std::vector<T> y(r * c * 2 + 4, T(7)), dx(r * c * 2 + 4, T(7));
  Matrix<T> X = strided ? Matrix<T>{x.data(), r, c, 2 * c, 2} : Matrix<T>{x.data(), 1, r * c, 0, 1};
  Matrix<T> DY = strided ? Matrix<T>{dy.data(), r, c, 2 * c, 2} : Matrix<T>{dy.data(), 1, r * c, 0, 1};
  Matrix<T> Y = strided ? Matrix<T>{y.data(), r, c, c, 1} : Matrix<T>{y.data(), 1, r * c, 0, 1};
  Matrix<T> DX = strided ? Matrix<T>{dx.data(), r, c, c, 1} : Matrix<T>{dx.data(), 1, r * c, 0, 1};
  cu::relu<T>(Y, cv(X), nullptr);
  cu::relu_backward<T>(DX, cv(DY), cv(X), nullptr);
  int bad = 0;
  for (int64_t i = 0; i < X.rows; ++i) for (int64_t j = 0; j < X.cols; ++j) {
    T v = X(i, j), e = v > 0 ? v : (v == v ? T(0) : v), g = v > 0 ? DY(i, j) : T(0);
    if (!(Y(i, j) == e || (e != e && Y(i, j) != Y(i, j)))) ++bad;
    if (DX(i, j) != g) ++bad;
  }
  CHECK(bad == 0, "relu/relu_backward %ldx%ld strided=%d: %d bad", r, c, strided, bad);
  // bias_add / bias_grad on the strided view
  Matrix<T> XS{x.data(), r, c, 2 * c, 2};
  auto b = randv<T>(c);
  std::vector<T> z(r * c);
  cu::bias_add<T>({z.data(), r, c, c, 1}, cv(XS), {b.data(), c, 1}, nullptr);
  int bb = 0;
  for (int64_t i = 0; i < r; ++i) for (int64_t j = 0; j < c; ++j) {
    T e = XS(i, j) + b[j];
    if (!(z[i * c + j] == e || (e != e && z[i * c + j] != z[i * c + j]))) ++bb;
  }
  CHECK(bb == 0, "bias_add %ldx%ld: %d bad", r, c, bb);
  x[0] = 1;
  for (int acc = 0; acc < 2; ++acc) {
    auto db0 = randv<T>(c);
    std::vector<T> db = db0;
    cu::bias_grad<T>({db.data(), c, 1}, cv(XS), acc, nullptr);
    int bg = 0;
    for (int64_t j = 0; j < c; ++j) {
      double s = 0, mag = 0; for (int64_t i = 0; i < r; ++i) { s += XS(i, j); mag += std::abs(double(XS(i, j))); }
      const double e = acc ? double(db0[j]) + s : s;
      const double u = sizeof(T) == 8 ? 0x1p-53 : 0x1p-24;
      if (std::abs(db[j] - e) > 2 * (u + r * 0x1p-53) * (mag + std::abs(double(db0[j]))) + 1e-300) ++bg;
    }
    CHECK(bg == 0, "bias_grad %ldx%ld acc=%d: %d bad", r, c, acc, bg);
  }
}

template <class T, class I> void test_xent(int64_t B, int64_t C, bool soft) {
  auto x = randv<T>(B * C);
  for (auto& v : x) v *= 3;
  std::vector<I> lab(B * 2 + 1);
  for (int64_t i = 0; i < B; ++i) lab[2 * i] = I(gen() % C);
  auto t = randv<T>(B * C);
  for (int64_t i = 0; i < B; ++i) { double s = 0; for (int64_t j = 0; j < C; ++j) { t[i*C+j] = std::abs(t[i*C+j]); s += t[i*C+j]; } for (int64_t j = 0; j < C; ++j) t[i*C+j] /= s; }
  std::vector<T> d(B * C), y(B * C), dx(B * C);
  T loss = 0;
  Matrix<const T> X{x.data(), B, C, C, 1};
  if (soft) cu::softmax_cross_entropy<T>(&loss, {d.data(), B, C, C, 1}, X, {t.data(), B, C, C, 1}, nullptr);
  else cu::softmax_cross_entropy<T, I>(&loss, {d.data(), B, C, C, 1}, X, lab.data(), 2 * sizeof(I), nullptr);
  cu::softmax<T>({y.data(), B, C, C, 1}, X, nullptr);
  cu::softmax_backward<T>({dx.data(), B, C, C, 1}, {d.data(), B, C, C, 1}, {y.data(), B, C, C, 1}, nullptr);
  double total = 0; int bad = 0;
  for (int64_t i = 0; i < B; ++i) {
    double m = -1e300; for (int64_t j = 0; j < C; ++j) m = std::max(m, double(x[i*C+j]));
    double s = 0; for (int64_t j = 0; j < C; ++j) s += std::exp(x[i*C+j] - m);
    double dot = 0; for (int64_t j = 0; j < C; ++j) dot += double(d[i*C+j]) * y[i*C+j];
    for (int64_t j = 0; j < C; ++j) {
      double p = std::exp(x[i*C+j] - m) / s, tj = soft ? double(t[i*C+j]) : (j == int64_t(lab[2*i]) ? 1.0 : 0.0);
      if (tj != 0) total += tj * (std::log(s) - (x[i*C+j] - m));
      if (std::abs(d[i*C+j] - (p - tj) / B) > 1e-5 / B + 1e-6) ++bad;
      if (std::abs(y[i*C+j] - p) > 1e-6) ++bad;
      if (std::abs(dx[i*C+j] - p * (d[i*C+j] - dot)) > 1e-6) ++bad;
    }
  }
  total /= B;
  CHECK(bad == 0 && std::abs(loss - total) < 1e-5 * (1 + std::abs(total)), "xent B=%ld C=%ld soft=%d: %d bad, loss %g vs %g", B, C, soft, bad, double(loss), total);
  if (!soft) {
    CHECK(cu::first_out_of_range<I>(lab.data(), 2 * sizeof(I), B, C, nullptr) == -1, "range: none expected");
    lab[2 * (B / 2)] = I(C);
    int64_t got = cu::first_out_of_range<I>(lab.data(), 2 * sizeof(I), B, C, nullptr);
    CHECK(got == B / 2, "range: expected %ld got %ld", B / 2, got);
    cu::softmax_cross_entropy<T, I>(&loss, {d.data(), B, C, C, 1}, X, lab.data(), 2 * sizeof(I), nullptr);
    CHECK(loss != loss && d[(B / 2) * C] != d[(B / 2) * C], "unchecked bad label: NaN expected");
  }
}

template <class T> void test_optim() {
  std::vector<int64_t> sizes = {33, 5000, 1, 0, 9000};
  for (int count : {5, 40}) {
    std::vector<std::vector<T>> p, g, v, m, p0, v0, m0;
    std::vector<int64_t> sz;
    for (int i = 0; i < count; ++i) {
      int64_t s = sizes[i % sizes.size()];
      sz.push_back(s); p.push_back(randv<T>(s)); g.push_back(randv<T>(s)); v.push_back(randv<T>(s)); m.push_back(randv<T>(s));
      for (auto& e : v.back()) e = std::abs(e);
    }
    p0 = p; v0 = v; m0 = m;
    std::vector<T*> pp, vp, mp; std::vector<const T*> gp;
    for (int i = 0; i < count; ++i) { pp.push_back(p[i].data()); gp.push_back(g[i].data()); vp.push_back(v[i].data()); mp.push_back(m[i].data()); }
    cu::adam_update<T>(count, pp.data(), gp.data(), mp.data(), vp.data(), sz.data(), 1e-3, 0.9, 0.999, 1e-8, 0.01, true, 3, nullptr);
    int bad = 0;
    const double bc1 = 1 - std::pow(0.9, 3.0), bc2 = 1 - std::pow(0.999, 3.0);
    const T step_size = T(1e-3 / bc1), inv = T(1 / std::sqrt(bc2)), b1 = T(0.9), omb1 = T(1 - 0.9), b2 = T(0.999), omb2 = T(1 - 0.999), eps = T(1e-8), shrink = T(1 - 1e-3 * 0.01);
    for (int i = 0; i < count; ++i) for (int64_t k = 0; k < sz[i]; ++k) {
      T gk = g[i][k]; T mk = b1 * m0[i][k] + omb1 * gk; T vk = b2 * v0[i][k] + omb2 * gk * gk;
      T pk = p0[i][k] * shrink - step_size * mk / (std::sqrt(vk) * inv + eps);
      if (m[i][k] != mk || v[i][k] != vk || p[i][k] != pk) ++bad;
    }
    CHECK(bad == 0, "adam count=%d: %d bad (bitwise)", count, bad);
    p = p0; v = v0;
    cu::momentum_update<T>(count, pp.data(), gp.data(), vp.data(), sz.data(), T(0.1), T(0.9), T(0.01), true, nullptr);
    bad = 0;
    for (int i = 0; i < count; ++i) for (int64_t k = 0; k < sz[i]; ++k) {
      T gk = g[i][k] + T(0.01) * p0[i][k]; T vk = T(0.9) * v0[i][k] + gk;
      T pk = p0[i][k] - T(0.1) * (gk + T(0.9) * vk);
      if (v[i][k] != vk || p[i][k] != pk) ++bad;
    }
    CHECK(bad == 0, "momentum count=%d: %d bad", count, bad);
    p = p0;
    cu::sgd_update<T>(count, pp.data(), gp.data(), sz.data(), T(0.1), T(0), nullptr);
    bad = 0;
    for (int i = 0; i < count; ++i) for (int64_t k = 0; k < sz[i]; ++k) if (p[i][k] != p0[i][k] - T(0.1) * (g[i][k] + T(0) * p0[i][k])) ++bad;
    CHECK(bad == 0, "sgd count=%d: %d bad", count, bad);
  }
}

template <class T> void all_gemm() {
  const int64_t shapes[][3] = {{1, 1, 1}, {7, 5, 33}, {64, 64, 16}, {65, 63, 17}, {130, 128, 36}, {33, 31, 1100}, {129, 131, 9}, {0, 3, 4}, {3, 5, 0}};
  for (int sm : {132, 2}) {
    emu::sm_count = sm;
    for (auto& s : shapes)
      for (int ta = 0; ta < 2; ++ta) for (int tb = 0; tb < 2; ++tb)
        for (int layout = 0; layout < 5; ++layout) {
          if (layout != 0 && (s[0] * s[1] * s[2] > 100000)) continue;
          test_gemm<T>(s[0], s[1], s[2], ta, tb, layout, T(1), T(0));
        }
    test_gemm<T>(37, 45, 21, false, false, 0, T(-0.5), T(2));
    test_gemm<T>(37, 45, 1500, true, false, 0, T(1.5), T(1));  // split K with beta
    test_gemm<T>(8, 8, 8, false, false, 0, T(0), T(1));       // alpha = 0
  }
  emu::sm_count = 132;
}

void test_alias() {
  std::vector<float> a = {1, 2, 3, 4};
  Matrix<float> A{a.data(), 2, 2, 2, 1};
  cu::gemm<float>(false, false, 1.f, cv(A), cv(A), 0.f, A, true, nullptr);
  CHECK(a[0] == 7 && a[1] == 10 && a[2] == 15 && a[3] == 22, "alias a·a: %g %g %g %g", a[0], a[1], a[2], a[3]);
  std::vector<float> b = {1, 1, 1, 1}, c = {1, 2, 3, 4};
  Matrix<float> Bm{b.data(), 2, 2, 2, 1}, Cm{c.data(), 2, 2, 2, 1};
  cu::gemm<float>(false, false, 1.f, cv(Cm), cv(Bm), 1.f, Bm, true, nullptr);  // b = c·b + b
  CHECK(b[0] == 4 && b[1] == 4 && b[2] == 8 && b[3] == 8, "alias beta: %g %g %g %g", b[0], b[1], b[2], b[3]);
}

int main(int argc, char** argv) {
  test_alias();
  test_dense<float>(61, 37, 32, 16, true); test_dense<float>(61, 37, 32, 16, false); test_dense<double>(61, 37, 32, 16, true);
  all_gemm<float>(); std::printf("gemm<float> done (%d checks, %d failures)\n", checks, failures); std::fflush(stdout);
  all_gemm<double>(); std::printf("gemm<double> done (%d checks, %d failures)\n", checks, failures); std::fflush(stdout);
  for (bool r : {false, true}) { test_dense<float>(61, 37, 29, 19, r); test_dense<double>(61, 37, 29, 19, r); test_dense<float>(3001, 3001, 33, 10, false); }
  for (bool s : {false, true}) { test_elementwise<float>(37, 29, s); test_elementwise<double>(600, 17, s); test_elementwise<float>(1, 1023, s); }
  test_xent<float, int64_t>(37, 10, false); test_xent<float, uint8_t>(37, 10, false); test_xent<double, int16_t>(9, 300, false);
  test_xent<float, int64_t>(37, 10, true); test_xent<double, int64_t>(5, 77, true);
  test_optim<float>(); test_optim<double>();
  std::printf("%d checks, %d failures\n", checks, failures);
  return failures != 0;
}
