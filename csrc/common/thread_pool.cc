#include "common/thread_pool.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <string>
#include <utility>

#include "common/error.h"

namespace pycomm {
namespace {

std::mutex pool_mutex;
std::shared_ptr<ThreadPool> shared_pool;
int requested_threads = 0;  // 0: not chosen yet

constexpr int kMaxThreads = 1024;

// Cores this process may run on (its affinity mask: under a launcher that pins ranks, the rank's
// own cores, not the machine's).
int usable_cores() {
  cpu_set_t mask;
  if (sched_getaffinity(0, sizeof mask, &mask) == 0) return std::max(1, CPU_COUNT(&mask));
  return std::max(1u, std::thread::hardware_concurrency());
}

int default_threads() {
  if (const char* env = std::getenv("PYCOMM_KERNEL_THREADS")) {
    char* end = nullptr;
    const long value = std::strtol(env, &end, 10);
    PYCOMM_ENFORCE(end != env && *end == '\0' && value >= 1 && value <= kMaxThreads, "PYCOMM_KERNEL_THREADS='",
                   env, "' is not a thread count in [1, ", kMaxThreads, "]");
    return static_cast<int>(value);
  }
  return std::min(usable_cores(), 8);
}

// fork() while another thread holds pool_mutex would leave it locked forever in the child, so the
// handlers hold it across the fork. In the child the workers are gone: the pool is leaked, not
// joined (its threads do not exist there), and the next call builds a new one. Registered when the
// library loads, before any thread can hold the mutex.
void lock_before_fork() { pool_mutex.lock(); }
void unlock_in_parent() { pool_mutex.unlock(); }
void reset_in_child() {
  if (shared_pool) new std::shared_ptr<ThreadPool>(std::move(shared_pool));  // leaked on purpose
  pool_mutex.unlock();
}
const bool fork_handlers_registered = pthread_atfork(lock_before_fork, unlock_in_parent, reset_in_child) == 0;

}  // namespace

ThreadPool::ThreadPool(int workers) {
  try {
    for (int i = 0; i < workers; ++i) workers_.emplace_back([this] { worker_loop(); });
  } catch (const std::exception& error) {
    // The workers already started wait on work_ready_: stop and join them before the members
    // go away, or destroying the condition variable would wait for them forever.
    const std::size_t started = workers_.size();
    stop_and_join();
    PYCOMM_THROW(Error, "could not start kernel worker thread ", started + 1, " of ", workers, ": ", error.what(),
                 "; lower the count with pycomm.kernels.set_threads() or PYCOMM_KERNEL_THREADS");
  }
}

ThreadPool::~ThreadPool() { stop_and_join(); }

void ThreadPool::stop_and_join() {
  {
    std::lock_guard<std::mutex> lock(state_mutex_);
    stopping_ = true;
  }
  work_ready_.notify_all();
  for (auto& worker : workers_) worker.join();
  workers_.clear();
}

void ThreadPool::run_tasks() {
  // Called with state_mutex_ unlocked; takes tasks one at a time until none are left.
  for (;;) {
    std::size_t index;
    const std::function<void(std::size_t)>* task;
    {
      std::lock_guard<std::mutex> lock(state_mutex_);
      if (next_task_ >= task_count_) return;
      index = next_task_++;
      task = task_;
    }
    std::exception_ptr error;
    try {
      (*task)(index);
    } catch (...) {
      error = std::current_exception();
    }
    std::lock_guard<std::mutex> lock(state_mutex_);
    if (error && !first_error_) first_error_ = error;
    if (--unfinished_ == 0) work_done_.notify_all();
  }
}

void ThreadPool::worker_loop() {
  unsigned seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(state_mutex_);
      work_ready_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
    }
    run_tasks();
  }
}

void ThreadPool::parallel_for(std::size_t tasks, const std::function<void(std::size_t)>& task) {
  std::unique_lock<std::mutex> submit(submit_mutex_, std::try_to_lock);
  if (tasks <= 1 || workers_.empty() || !submit.owns_lock()) {
    for (std::size_t i = 0; i < tasks; ++i) task(i);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(state_mutex_);
    task_ = &task;
    task_count_ = tasks;
    next_task_ = 0;
    unfinished_ = tasks;
    first_error_ = nullptr;
    ++generation_;
  }
  work_ready_.notify_all();
  run_tasks();
  std::unique_lock<std::mutex> lock(state_mutex_);
  work_done_.wait(lock, [&] { return unfinished_ == 0; });
  task_ = nullptr;
  if (first_error_) std::rethrow_exception(std::exchange(first_error_, nullptr));
}

std::shared_ptr<ThreadPool> kernel_pool() {
  int threads;
  {
    std::lock_guard<std::mutex> lock(pool_mutex);
    if (shared_pool) return shared_pool;
    if (requested_threads == 0) requested_threads = default_threads();
    threads = requested_threads;
  }
  // Started outside the lock: starting threads can fail or take a while, and nothing else may wait
  // on pool_mutex meanwhile. If another caller published a pool first, this one is dropped.
  auto pool = std::make_shared<ThreadPool>(threads - 1);
  std::lock_guard<std::mutex> lock(pool_mutex);
  if (!shared_pool) shared_pool = std::move(pool);
  return shared_pool;
}

void set_kernel_threads(int threads) {
  PYCOMM_ENFORCE(threads >= 1 && threads <= kMaxThreads, "threads must be in [1, ", kMaxThreads, "], got ", threads);
  std::shared_ptr<ThreadPool> old;  // joined outside the lock, once its last user is done
  std::lock_guard<std::mutex> lock(pool_mutex);
  requested_threads = threads;
  old = std::move(shared_pool);
}

int kernel_threads() {
  std::lock_guard<std::mutex> lock(pool_mutex);
  return requested_threads == 0 ? default_threads() : requested_threads;
}

}  // namespace pycomm
