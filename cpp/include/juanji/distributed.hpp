// Data-parallel training across processes with MPI (mpirun -np N ...): one process ("rank") per
// model replica, all in MPI_COMM_WORLD. Without MPI compiled in (JUANJI_MPI=OFF, or AUTO where
// no MPI was found) every function works as a world of one process, and init() raises when the
// process was started by a launcher with more than one rank, instead of training N unrelated
// copies.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "juanji/tensor.hpp"

namespace juanji::distributed {

enum class ReduceOp { sum, mean };

// Whether this copy of juanji was built with MPI, and the MPI library's own version text
// (MPI_Get_library_version: "Open MPI v4.1.4, ..."), empty without MPI.
bool compiled();
std::string library_version();

// Starts MPI (MPI_Init_thread asking for MPI_THREAD_SERIALIZED: calls may come from any thread,
// one at a time) unless it is already running, for instance started by mpi4py: then it is
// adopted, and finalize() leaves it to whoever started it. Idempotent. Raises std::runtime_error
// when MPI gives less than MPI_THREAD_FUNNELED, or when built without MPI under a launcher that
// started several ranks.
void init();
bool is_initialized();
// This process's rank in MPI_COMM_WORLD and the number of processes: 0 and 1 before init().
int rank();
int world_size();
void barrier();
// Ends MPI if init() started it (no-op otherwise, and after the first call).
void finalize();
// Ends every rank of the job at once with `code` (MPI_Abort); without MPI, std::exit(code).
[[noreturn]] void abort(int code);

// In place on every rank: the element-wise sum (or mean) over ranks of a contiguous float32 or
// float64 CPU tensor of the same shape on every rank. Every rank must call it, in the same order.
void all_reduce(Tensor& t, ReduceOp op = ReduceOp::sum);
// In place: root's values on every rank.
void broadcast(Tensor& t, int root = 0);
// The same on raw memory (count elements of dtype, which may also be int64).
void all_reduce(void* data, std::int64_t count, DType dtype, ReduceOp op);
void broadcast(void* data, std::int64_t count, DType dtype, int root);
// Sums in flight, for gradient buckets: start() begins a non-blocking allreduce (sum, in place)
// of memory that must stay untouched until wait(); progress() gives MPI the chance to move the
// started ones along (without a progress thread it moves them only inside MPI calls); wait()
// completes them all. Every rank must start the same sums in the same order. With one rank (or
// without MPI) start() does nothing.
class PendingSums {
 public:
  PendingSums();
  ~PendingSums();
  PendingSums(const PendingSums&) = delete;
  PendingSums& operator=(const PendingSums&) = delete;
  void start(void* data, std::int64_t count, DType dtype);
  void progress();
  void wait();

 private:
  struct Requests;
  std::unique_ptr<Requests> requests_;
};

// Root's text on every rank (for comparing model descriptions across ranks).
std::string broadcast_string(const std::string& text, int root = 0);

}  // namespace juanji::distributed
