// MPI backend of juanji::distributed; without MPI compiled in, a world of one process.
#include "juanji/distributed.hpp"

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <vector>

#include "juanji/build_config.hpp"
#include "juanji/error.hpp"

#if JUANJI_WITH_MPI
#include <mpi.h>
#endif

namespace juanji::distributed {

namespace {

#if JUANJI_WITH_MPI
bool started_here = false;  // init() called MPI_Init_thread, so finalize() ends it
bool finalized = false;
#endif

void check_tensor(const Tensor& t, const char* what) {
  check(t.defined(), what, ": the tensor is undefined");
  check_type(t.device().is_cpu(), what, ": expected a CPU tensor, got one on ", t.device().str());
  check_type(t.dtype() == DType::float32 || t.dtype() == DType::float64 || t.dtype() == DType::bfloat16, what,
             ": expected float32, float64 or bfloat16, got ", dtype_name(t.dtype()));
  check(t.is_contiguous(), what, ": expected a contiguous tensor");
}

// Sums go through MPI's own arithmetic, which has no bfloat16; a bfloat16 sum would also round
// at every rank's addition. Refused with one rank too, so a job fails the same at every scale.
void check_summable(DType dtype, const char* what) {
  check_type(dtype != DType::bfloat16, what,
             ": bfloat16 data cannot be summed over MPI; sum a float32 copy (to(float32)) instead");
}

#if !JUANJI_WITH_MPI
// A launcher's world size from its environment (Open MPI, MPICH/Hydra, Slurm), 1 when none.
int launcher_world_size() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_NTASKS"}) {
    if (const char* value = std::getenv(name)) {
      const int n = std::atoi(value);
      if (n > 0) return n;
    }
  }
  return 1;
}
#endif

#if JUANJI_WITH_MPI
void check_mpi(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw std::runtime_error(std::string(call) + " failed: " + std::string(text, length));
}

MPI_Datatype mpi_type(DType dtype) {
  switch (dtype) {
    case DType::float32: return MPI_FLOAT;
    case DType::float64: return MPI_DOUBLE;
    case DType::int64: return MPI_INT64_T;
    case DType::bfloat16: return MPI_UINT16_T;  // moved as bits: broadcast only (check_summable)
  }
  return MPI_DATATYPE_NULL;
}

bool mpi_running() {
  int initialized = 0, done = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&done);
  return initialized && !done;
}
#endif

template <class T>
void scale(void* data, std::int64_t count, double factor) {
  T* p = static_cast<T*>(data);
  const T f = static_cast<T>(factor);
  for (std::int64_t i = 0; i < count; ++i) p[i] *= f;
}

}  // namespace

bool compiled() { return JUANJI_WITH_MPI != 0; }

std::string library_version() {
#if JUANJI_WITH_MPI
  char text[MPI_MAX_LIBRARY_VERSION_STRING];
  int length = 0;
  MPI_Get_library_version(text, &length);  // callable before MPI_Init
  std::string version(text, length);
  while (!version.empty() && (version.back() == '\n' || version.back() == ' ' || version.back() == '\0'))
    version.pop_back();
  // The name and version come first; Open MPI adds its package, repository and date after
  // commas, MPICH its build options on further lines.
  const auto end = version.find_first_of(",\n");
  if (end != std::string::npos) version.resize(end);
  return version;
#else
  return {};
#endif
}

void init() {
#if JUANJI_WITH_MPI
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) {
    int done = 0;
    MPI_Finalized(&done);
    if (done) throw std::runtime_error("juanji.distributed.init: MPI was already finalized in this process");
  } else {
    int provided = 0;
    check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
    started_here = true;
  }
  int provided = 0;
  MPI_Query_thread(&provided);
  if (provided < MPI_THREAD_FUNNELED)
    throw std::runtime_error(
        "juanji.distributed.init: MPI gives only MPI_THREAD_SINGLE; juanji needs MPI_THREAD_FUNNELED "
        "or better (with mpi4py, set mpi4py.rc.thread_level = 'serialized' before importing MPI)");
  // Errors come back as codes (raised as exceptions) instead of ending the job in silence.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
#else
  const int launched = launcher_world_size();
  if (launched > 1)
    throw std::runtime_error(
        "juanji.distributed.init: this process is one of " + std::to_string(launched) +
        " started by an MPI launcher, but this copy of juanji was built without MPI; install an MPI "
        "(Debian: apt-get install openmpi-bin libopenmpi-dev) and rebuild with JUANJI_MPI=ON");
#endif
}

bool is_initialized() {
#if JUANJI_WITH_MPI
  return mpi_running();
#else
  return false;
#endif
}

int rank() {
#if JUANJI_WITH_MPI
  if (!mpi_running()) return 0;
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
#else
  return 0;
#endif
}

int world_size() {
#if JUANJI_WITH_MPI
  if (!mpi_running()) return 1;
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
#else
  return 1;
#endif
}

void barrier() {
#if JUANJI_WITH_MPI
  if (!mpi_running()) return;
  check_mpi(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
#endif
}

void finalize() {
#if JUANJI_WITH_MPI
  if (!started_here || finalized || !mpi_running()) return;
  finalized = true;
  MPI_Finalize();
#endif
}

void abort(int code) {
#if JUANJI_WITH_MPI
  if (mpi_running()) MPI_Abort(MPI_COMM_WORLD, code);
#endif
  std::exit(code);
}

void all_reduce(void* data, std::int64_t count, DType dtype, ReduceOp op) {
  check(count >= 0, "all_reduce: count must be non-negative, got ", count);
  check_summable(dtype, "all_reduce");
#if JUANJI_WITH_MPI
  if (mpi_running() && world_size() > 1) {
    char* bytes = static_cast<char*>(data);
    const std::int64_t element = static_cast<std::int64_t>(dtype_size(dtype));
    for (std::int64_t done = 0; done < count;) {
      const int n = static_cast<int>(std::min<std::int64_t>(count - done, INT_MAX));
      check_mpi(MPI_Allreduce(MPI_IN_PLACE, bytes + done * element, n, mpi_type(dtype), MPI_SUM,
                              MPI_COMM_WORLD),
                "MPI_Allreduce");
      done += n;
    }
  }
#endif
  if (op == ReduceOp::mean && world_size() > 1) {
    const double factor = 1.0 / world_size();
    check_type(dtype != DType::int64, "all_reduce: op mean needs float32 or float64 data");
    if (dtype == DType::float32) scale<float>(data, count, factor);
    else scale<double>(data, count, factor);
  }
}

void broadcast(void* data, std::int64_t count, DType dtype, int root) {
  check(root >= 0 && root < world_size(), "broadcast: root must be in [0, ", world_size(), "), got ", root);
#if JUANJI_WITH_MPI
  if (!mpi_running() || world_size() == 1) return;
  char* bytes = static_cast<char*>(data);
  const std::int64_t element = static_cast<std::int64_t>(dtype_size(dtype));
  for (std::int64_t done = 0; done < count;) {
    const int n = static_cast<int>(std::min<std::int64_t>(count - done, INT_MAX));
    check_mpi(MPI_Bcast(bytes + done * element, n, mpi_type(dtype), root, MPI_COMM_WORLD), "MPI_Bcast");
    done += n;
  }
#else
  (void)data, (void)count, (void)dtype;
#endif
}

void all_reduce(Tensor& t, ReduceOp op) {
  check_tensor(t, "all_reduce");
  all_reduce(t.data_ptr(), t.numel(), t.dtype(), op);
}

void broadcast(Tensor& t, int root) {
  check_tensor(t, "broadcast");
  broadcast(t.data_ptr(), t.numel(), t.dtype(), root);
}

#if JUANJI_WITH_MPI
struct PendingSums::Requests {
  std::vector<MPI_Request> list;
};
#else
struct PendingSums::Requests {};
#endif

PendingSums::PendingSums() : requests_(std::make_unique<Requests>()) {}
PendingSums::~PendingSums() {
  try {
    wait();
  } catch (...) {  // a destructor must not throw; the job is failing anyway
  }
}

void PendingSums::start(void* data, std::int64_t count, DType dtype) {
  check_summable(dtype, "PendingSums.start");
#if JUANJI_WITH_MPI
  if (!mpi_running() || world_size() == 1) return;
  char* bytes = static_cast<char*>(data);
  const std::int64_t element = static_cast<std::int64_t>(dtype_size(dtype));
  for (std::int64_t done = 0; done < count;) {
    const int n = static_cast<int>(std::min<std::int64_t>(count - done, INT_MAX));
    MPI_Request request;
    check_mpi(MPI_Iallreduce(MPI_IN_PLACE, bytes + done * element, n, mpi_type(dtype), MPI_SUM,
                             MPI_COMM_WORLD, &request),
              "MPI_Iallreduce");
    requests_->list.push_back(request);
    done += n;
  }
#else
  (void)data, (void)count, (void)dtype;
#endif
}

void PendingSums::progress() {
#if JUANJI_WITH_MPI
  if (requests_->list.empty()) return;
  int all_done = 0;
  check_mpi(MPI_Testall(static_cast<int>(requests_->list.size()), requests_->list.data(), &all_done,
                        MPI_STATUSES_IGNORE),
            "MPI_Testall");
  if (all_done) requests_->list.clear();
#endif
}

void PendingSums::wait() {
#if JUANJI_WITH_MPI
  if (requests_->list.empty()) return;
  std::vector<MPI_Request> list;
  list.swap(requests_->list);
  check_mpi(MPI_Waitall(static_cast<int>(list.size()), list.data(), MPI_STATUSES_IGNORE), "MPI_Waitall");
#endif
}

std::string broadcast_string(const std::string& text, int root) {
  std::int64_t length = static_cast<std::int64_t>(text.size());
  broadcast(&length, 1, DType::int64, root);
  std::string result = rank() == root ? text : std::string(static_cast<std::size_t>(length), '\0');
#if JUANJI_WITH_MPI
  if (mpi_running() && world_size() > 1) {
    for (std::int64_t done = 0; done < length;) {
      const int n = static_cast<int>(std::min<std::int64_t>(length - done, INT_MAX));
      check_mpi(MPI_Bcast(result.data() + done, n, MPI_CHAR, root, MPI_COMM_WORLD), "MPI_Bcast");
      done += n;
    }
  }
#endif
  return result;
}

}  // namespace juanji::distributed
