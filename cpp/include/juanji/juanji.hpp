// Umbrella header: everything a program embedding juanji needs.
#pragma once

#include "juanji/build_config.hpp"
#include "juanji/data/augment.hpp"
#include "juanji/dlpack.hpp"
#include "juanji/error.hpp"
#include "juanji/nn/layers.hpp"
#include "juanji/nn/sequential.hpp"
#include "juanji/ops/conv.hpp"
#include "juanji/ops/dense.hpp"
#include "juanji/ops/loss.hpp"
#include "juanji/ops/pool.hpp"
#include "juanji/ops/signal.hpp"
#include "juanji/optim/adam.hpp"
#include "juanji/optim/sgd.hpp"
#include "juanji/runtime.hpp"
#include "juanji/selftest.hpp"
#include "juanji/tensor.hpp"
