// Max pooling one (H, W) plane at a time, for ops that make or take the planes of a pooling's
// input themselves (batch norm, ReLU and max pooling in one pass: cpu/dense.cpp).
#pragma once

#include <cstdint>

#include "juanji/ops/pool.hpp"

namespace juanji::cpu {

// The common 2x2 stride-2 unpadded window with every window inside the plane (floor mode).
bool is_plain_2x2(const PoolGeometry& g);

// x (H, W) -> y (P, Q) and argmax (P, Q, or null): the flat index h*W+w of each window's first
// maximum, as max_pool_forward.
template <class T>
void max_pool_plane(const PoolGeometry& g, const T* x, T* y, std::int64_t* argmax);

// grad_x (H, W) = grad_y (P, Q) added at each window's argmax where gate (P, Q) is > 0, or
// everywhere when gate is null; zero elsewhere.
template <class T>
void scatter_max_pool_plane(const PoolGeometry& g, const T* grad_y, const std::int64_t* argmax,
                            const T* gate, T* grad_x);

}  // namespace juanji::cpu
