// A small pool of worker threads for splitting one large kernel call across cores.
//
// Ownership: the pool owns its workers and joins them in its destructor. parallel_for() runs on the
// calling thread too and returns when every task has finished. One parallel_for() runs at a time;
// a caller that finds the pool busy (another thread's call is in progress) runs its tasks inline
// instead of waiting, so concurrent callers never queue behind each other or oversubscribe.
// After fork() the child gets a fresh pool (the parent's workers do not exist there).
//
// The kernels' pool is shared: kernel_pool() hands out a reference-counted pointer, so resizing it
// (set_kernel_threads) while another thread is inside parallel_for() is safe; the old pool is
// joined when its last user lets go. Lock order: submit_mutex_ before state_mutex_.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace pycomm {

class ThreadPool {
 public:
  explicit ThreadPool(int workers);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls task(i) for i in [0, tasks), spread over the workers and the calling thread. Rethrows
  // the first exception a task threw, after every task has finished. A task must not call
  // parallel_for() on the same pool.
  void parallel_for(std::size_t tasks, const std::function<void(std::size_t)>& task);

 private:
  void worker_loop();
  void run_tasks();
  void stop_and_join();

  std::vector<std::thread> workers_;
  std::mutex submit_mutex_;
  std::mutex state_mutex_;
  std::condition_variable work_ready_;
  std::condition_variable work_done_;
  const std::function<void(std::size_t)>* task_ = nullptr;
  std::size_t task_count_ = 0;
  std::size_t next_task_ = 0;
  std::size_t unfinished_ = 0;
  unsigned generation_ = 0;
  bool stopping_ = false;
  std::exception_ptr first_error_;
};

// The process-wide pool for the kernels, sized by set_kernel_threads() or PYCOMM_KERNEL_THREADS
// (default: the cores this process may run on, at most 8). Throws when the environment variable is
// not a count in [1, 1024] or the threads cannot be started.
std::shared_ptr<ThreadPool> kernel_pool();

// Resizes the kernels' pool (1 = no worker threads).
void set_kernel_threads(int threads);
int kernel_threads();

}  // namespace pycomm
