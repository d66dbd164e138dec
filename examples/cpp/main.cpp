// Embeds juanji in a plain C++ program: builds a tiny image, finds its vertical edge with a
// Sobel-like convolution, and checks the answer.
#include <juanji/juanji.hpp>

#include <cstdio>

int main() {
  using namespace juanji;
  std::printf("juanji %s, SIMD %s, %d threads\n", version().c_str(), simd_name(simd_level()),
              get_num_threads());

  // A 1x1x4x6 image: dark left half, bright right half.
  Tensor image = Tensor::zeros({1, 1, 4, 6});
  float* pixels = image.data<float>();
  for (int row = 0; row < 4; ++row)
    for (int col = 3; col < 6; ++col) pixels[row * 6 + col] = 1.0f;

  Tensor kernel = Tensor::empty({1, 1, 3, 3});
  const float sobel_x[9] = {-1, 0, 1, -2, 0, 2, -1, 0, 1};
  for (int i = 0; i < 9; ++i) kernel.data<float>()[i] = sobel_x[i];

  ConvOptions options;
  options.padding = PaddingSpec::valid();
  const Tensor edges = conv2d(image, kernel, Tensor(), options);  // (1, 1, 2, 4)
  const float* e = edges.data<float>();
  std::printf("edge response row 0: %g %g %g %g\n", e[0], e[1], e[2], e[3]);
  const bool ok = e[0] == 0 && e[1] == 4 && e[2] == 4 && e[3] == 0;
  std::printf("%s\n", ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
