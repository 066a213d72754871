// The CUDA executor of the GPU attention backend (attention_executor.h): layer and cache copies
// in device memory, and the three operations as batched launches. A warp owns one (item,
// query head) and spreads head_dim over its lanes (head_dim / 32 components each), so that
// every row read is coalesced; scores are float, softmax sums double. Host code waits for the
// results of each call (the engine reads them at once); all work is on the legacy default
// stream of the executor's device, so calls of several host threads are ordered.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

#include "gpu/attention_executor.h"
#include "gpu/device_buffer.h"
#include "gpu/dispatch.h"
#include "gpu/kernel_common.cuh"

namespace kvsim::gpu {
namespace {

using detail::kFullMask;
using detail::kWarpSize;

constexpr int kWarpsPerBlock = 4;

// --- device memory ------------------------------------------------------------------------

// Grows `buffer` (contents lost) to at least `size` elements, with room to spare.
template <typename T>
void reserve(DeviceBuffer<T>& buffer, size_t size) {
  if (size > buffer.size()) buffer = DeviceBuffer<T>(size + size / 2);
}

void upload(void* dst, const void* src, size_t bytes) {
  if (bytes > 0) KVSIM_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}
void download(void* dst, const void* src, size_t bytes) {
  if (bytes > 0) KVSIM_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

struct DeviceLayer final : LayerImage {
  int slot = 0, num_tokens = 0, head_dim = 0;
  DeviceBuffer<float> q, k, v;
  size_t bytes() const override { return q.bytes() + k.bytes() + v.bytes(); }
};

struct DeviceCache final : CacheImage {
  int head_dim = 0;
  int64_t rows = 0, capacity = 0;
  DeviceBuffer<float> keys, values;
  DeviceBuffer<int32_t> positions;
  size_t bytes() const override { return keys.bytes() + values.bytes() + positions.bytes(); }
};

struct DeviceScratch final : ExecutorScratch {
  DeviceBuffer<unsigned char> workspace, prefill;
  std::vector<unsigned char> host_descriptors;
};

// --- kernels ------------------------------------------------------------------------------

__device__ __forceinline__ int64_t window_start_dev(int window, int64_t t) {
  return window > 0 && t - window + 1 > 0 ? t - window + 1 : 0;
}

template <int D>
__device__ __forceinline__ void load_row(const float* row, float (&x)[D / kWarpSize], int lane) {
#pragma unroll
  for (int i = 0; i < D / kWarpSize; ++i) x[i] = row[lane + kWarpSize * i];
}

// q . row over the warp; every lane gets the result.
template <int D>
__device__ __forceinline__ float warp_dot(const float (&q)[D / kWarpSize], const float* row,
                                          int lane) {
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < D / kWarpSize; ++i) s += q[i] * row[lane + kWarpSize * i];
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o /= 2) s += __shfl_xor_sync(kFullMask, s, o);
  return s;
}

// A running log-sum-exp over scores added one at a time (max subtracted, sum in double).
struct OnlineLse {
  float mx = -FLT_MAX;
  double sum = 0;
  __device__ void add(float s) {
    if (s > mx) {
      sum *= sum > 0 ? exp(static_cast<double>(mx) - s) : 0.0;
      mx = s;
    }
    sum += exp(static_cast<double>(s) - mx);
  }
  __device__ double value() const { return mx + log(sum); }
};

__device__ __forceinline__ int64_t warp_index() {
  return (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
}

// (a) Exact attention: one warp per (measured step, query head), an online softmax over the
// step's window of trace keys.
struct ExactArgs {
  const float *q, *k, *v;
  const int64_t* measured;
  int64_t items;  // measured x num_q_heads
  int num_tokens, num_q_heads, group, window;
  float scale;
  float* out;     // [measured, Hq, D]
  double* lse;    // [measured, Hq]
  int32_t* top1;  // [measured, Hq]
};

template <int D>
__global__ void exact_attention_kernel(ExactArgs a) {
  constexpr int P = D / kWarpSize;
  const int64_t w = warp_index();
  if (w >= a.items) return;  // whole warps
  const int lane = threadIdx.x % kWarpSize;
  const int64_t m = w / a.num_q_heads;
  const int qh = static_cast<int>(w % a.num_q_heads), kvh = qh / a.group;
  const int64_t t = a.measured[m], lo = window_start_dev(a.window, t);
  float q[P], acc[P] = {};
  load_row<D>(a.q + (static_cast<int64_t>(qh) * a.num_tokens + t) * D, q, lane);
  const float* keys = a.k + static_cast<int64_t>(kvh) * a.num_tokens * D;
  const float* values = a.v + static_cast<int64_t>(kvh) * a.num_tokens * D;
  float mx = -FLT_MAX;
  double sum = 0;
  int64_t top = lo;
  for (int64_t i = lo; i <= t; ++i) {
    const float s = warp_dot<D>(q, keys + i * D, lane) * a.scale;
    if (s > mx) {  // strict: the first largest score wins, like std::max_element
      const float r = sum > 0 ? expf(mx - s) : 0.f;
      sum *= r;
#pragma unroll
      for (int c = 0; c < P; ++c) acc[c] *= r;
      mx = s;
      top = i;
    }
    const float p = expf(s - mx);
    sum += p;
#pragma unroll
    for (int c = 0; c < P; ++c) acc[c] += p * values[i * D + lane + kWarpSize * c];
  }
  const float inv = static_cast<float>(1.0 / sum);
#pragma unroll
  for (int c = 0; c < P; ++c) a.out[w * D + lane + kWarpSize * c] = acc[c] * inv;
  if (lane == 0) {
    a.lse[w] = mx + log(sum);
    a.top1[w] = static_cast<int32_t>(top);
  }
}

// (c) One task of the ragged cache attention (device copy of RaggedLayout's row t).
struct TaskDesc {
  const float *q, *k;  // the layer's queries and trace keys
  const float *cache_keys, *cache_values;
  const int32_t* positions;
  int64_t row_begin, n, step;
  int32_t num_tokens, kv_head, measured, pad;
};

struct RaggedArgs {
  const TaskDesc* tasks;
  int64_t items;  // tasks x group
  int group;
  float scale;
  const double* exact_lse;  // [measured, group]
  float *scores, *probs;    // [group * total_rows]
  double* lse_hat;          // [tasks, group]
  float *out_hat, *kept_mass, *kept_cross;
  int32_t* top1;
};

template <int D>
__global__ void ragged_cache_attention_kernel(RaggedArgs a) {
  constexpr int P = D / kWarpSize;
  const int64_t w = warp_index();
  if (w >= a.items) return;
  const int lane = threadIdx.x % kWarpSize;
  const TaskDesc task = a.tasks[w / a.group];
  const int j = static_cast<int>(w % a.group);
  const int64_t n = task.n;
  float q[P];
  load_row<D>(
      task.q +
          ((static_cast<int64_t>(task.kv_head) * a.group + j) * task.num_tokens + task.step) * D,
      q, lane);
  float* scores = a.scores + task.row_begin * a.group + j * n;
  float* probs = a.probs + task.row_begin * a.group + j * n;
  OnlineLse running;
  for (int64_t i = 0; i < n; ++i) {
    const float s = warp_dot<D>(q, task.cache_keys + i * D, lane) * a.scale;
    if (lane == 0) scores[i] = s;
    running.add(s);
  }
  const double lse = n > 0 ? running.value() : -INFINITY;
  if (lane == 0) a.lse_hat[w] = lse;
  __syncwarp();
  for (int64_t i = lane; i < n; i += kWarpSize) {
    probs[i] = static_cast<float>(exp(static_cast<double>(scores[i]) - lse));
  }
  if (task.measured < 0) return;
  __syncwarp();
  const int64_t mq = static_cast<int64_t>(task.measured) * a.group + j;
  const float lse_exact = static_cast<float>(a.exact_lse[mq]);
  const float* trace_keys = task.k + static_cast<int64_t>(task.kv_head) * task.num_tokens * D;
  float acc[P] = {};
  double mass = 0, cross = 0;
  float best = -INFINITY;
  int32_t best_pos = -1;
  for (int64_t i = 0; i < n; ++i) {
    const float p = probs[i], s = scores[i];
    const int32_t pos = task.positions[i];
#pragma unroll
    for (int c = 0; c < P; ++c) acc[c] += p * task.cache_values[i * D + lane + kWarpSize * c];
    const float raw = warp_dot<D>(q, trace_keys + static_cast<int64_t>(pos) * D, lane) * a.scale;
    const float pe = expf(raw - lse_exact);
    mass += pe;
    cross += static_cast<double>(pe) * (raw - s);
    if (s > best || (s == best && pos < best_pos) || best_pos < 0) {
      best = s;
      best_pos = pos;
    }
  }
#pragma unroll
  for (int c = 0; c < P; ++c) a.out_hat[mq * D + lane + kWarpSize * c] = acc[c];
  if (lane == 0) {
    a.kept_mass[mq] = static_cast<float>(mass);
    a.kept_cross[mq] = static_cast<float>(cross);
    a.top1[mq] = best_pos;
  }
}

// (b) Prefill column sums in two tiled passes, without atomics (deterministic): the log-sum-exp
// of every summed (row, query head), then per (query head, candidate) the sum over the rows
// that see the candidate of exp(score - lse), recomputing the score.
struct PrefillDesc {
  const float *q, *k;
  const int32_t* candidates;
  int64_t first_row, prompt_len, row_begin, colsum_begin, num_candidates;
  int32_t num_tokens, kv_head, window, pad;
};

struct PrefillArgs {
  const PrefillDesc* tasks;
  int num_tasks, group;
  int64_t items;  // rows or column sums of all tasks
  float scale;
  double* row_lse;  // [rows x group of all tasks]
  float* colsum;    // [group x candidates of all tasks]
};

// The task whose range [begin(t), begin(t + 1)) holds item w (ranges ascend).
template <typename Begin>
__device__ int find_task(int num_tasks, int64_t w, Begin begin) {
  int lo = 0, hi = num_tasks - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (begin(mid) <= w)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// The task of warp w in a launch whose items are the tasks' ranges starting at `Begin`, and
// w's index in its task's range.
template <int64_t PrefillDesc::*Begin>
__device__ const PrefillDesc& prefill_task(const PrefillArgs& a, int64_t w, int64_t& local) {
  const PrefillDesc& task =
      a.tasks[find_task(a.num_tasks, w, [&](int t) { return a.tasks[t].*Begin; })];
  local = w - task.*Begin;
  return task;
}

template <int D>
__global__ void prefill_row_lse_kernel(PrefillArgs a) {
  const int64_t w = warp_index();
  if (w >= a.items) return;
  const int lane = threadIdx.x % kWarpSize;
  int64_t local = 0;
  const PrefillDesc& task = prefill_task<&PrefillDesc::row_begin>(a, w, local);
  const int64_t r = task.first_row + local / a.group;
  const int j = static_cast<int>(local % a.group);
  float q[D / kWarpSize];
  load_row<D>(
      task.q + ((static_cast<int64_t>(task.kv_head) * a.group + j) * task.num_tokens + r) * D, q,
      lane);
  const float* keys = task.k + static_cast<int64_t>(task.kv_head) * task.num_tokens * D;
  OnlineLse running;
  for (int64_t i = window_start_dev(task.window, r); i <= r; ++i) {
    running.add(warp_dot<D>(q, keys + i * D, lane) * a.scale);
  }
  if (lane == 0) a.row_lse[w] = running.value();
}

template <int D>
__global__ void prefill_colsum_kernel(PrefillArgs a) {
  const int64_t w = warp_index();
  if (w >= a.items) return;
  int64_t local = 0;
  const PrefillDesc& task = prefill_task<&PrefillDesc::colsum_begin>(a, w, local);
  const int64_t pos = task.candidates[local % task.num_candidates];  // the candidate's position
  const int j = static_cast<int>(local / task.num_candidates);       // the query head in the group
  const int lane = threadIdx.x % kWarpSize;
  float key[D / kWarpSize];
  const float* keys = task.k + static_cast<int64_t>(task.kv_head) * task.num_tokens * D;
  load_row<D>(keys + pos * D, key, lane);
  const float* queries =
      task.q + (static_cast<int64_t>(task.kv_head) * a.group + j) * task.num_tokens * D;
  const int64_t r0 = pos > task.first_row ? pos : task.first_row;
  int64_t r1 = task.prompt_len - 1;  // the last row whose window holds pos
  if (task.window > 0 && pos + task.window - 1 < r1) r1 = pos + task.window - 1;
  double sum = 0;
  for (int64_t r = r0; r <= r1; ++r) {
    const float s = warp_dot<D>(key, queries + r * D, lane) * a.scale;
    sum += exp(static_cast<double>(s) -
               a.row_lse[task.row_begin + (r - task.first_row) * a.group + j]);
  }
  if (lane == 0) a.colsum[w] = static_cast<float>(sum);
}

// Row i of the new copy from row source[i] of the old one, or staged row -(source[i] + 1).
__global__ void gather_rows_kernel(const int32_t* source, int64_t rows, int d, const float* old_k,
                                   const float* old_v, const float* staged_k, const float* staged_v,
                                   float* new_k, float* new_v) {
  const int64_t total = rows * d;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / d, c = e % d;
    const int32_t src = source[i];
    const int64_t from = (src >= 0 ? src : -static_cast<int64_t>(src) - 1) * d + c;
    new_k[e] = src >= 0 ? old_k[from] : staged_k[from];
    new_v[e] = src >= 0 ? old_v[from] : staged_v[from];
  }
}

unsigned blocks_for_warps(int64_t warps) {
  return static_cast<unsigned>(detail::ceil_div(warps, kWarpsPerBlock));
}

// Packs `count` arrays into one device buffer at the given offsets: one upload.
size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

class CudaExecutor final : public AttentionExecutor {
 public:
  explicit CudaExecutor(int device) : device_(device) {
    require_cuda();
    int count = 0;
    KVSIM_CUDA_CHECK(cudaGetDeviceCount(&count));
    if (device < 0 || device >= count) {
      throw ConfigError("CUDA device " + std::to_string(device) + " does not exist (" +
                        std::to_string(count) + " visible)");
    }
    select();
    cudaDeviceProp prop{};
    KVSIM_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    name_ = std::string("cuda:") + std::to_string(device) + " (" + prop.name + ")";
  }

  std::string name() const override { return name_; }

  std::unique_ptr<LayerImage> upload_layer(const LayerData& layer) override {
    select();
    if (!is_supported_head_dim(layer.head_dim)) {
      throw ConfigError("--device cuda: head_dim " + std::to_string(layer.head_dim) +
                        " has no kernel (supported: 64, 128, 256)");
    }
    auto image = std::make_unique<DeviceLayer>();
    image->slot = layer.slot;
    image->num_tokens = layer.num_tokens;
    image->head_dim = layer.head_dim;
    for (auto [dst, src] : {std::pair{&image->q, &layer.q}, std::pair{&image->k, &layer.k},
                            std::pair{&image->v, &layer.v}}) {
      *dst = DeviceBuffer<float>(std::span<const float>(*src));
    }
    return image;
  }

  std::unique_ptr<CacheImage> new_cache_image(int head_dim) override {
    auto image = std::make_unique<DeviceCache>();
    image->head_dim = head_dim;
    return image;
  }

  void apply_delta(CacheImage& base, const CacheDeltaPlan& plan, std::span<const int32_t> positions,
                   std::span<const float> staged_keys,
                   std::span<const float> staged_values) override {
    select();
    DeviceCache& image = static_cast<DeviceCache&>(base);
    const int64_t n = static_cast<int64_t>(plan.source.size());
    const size_t d = static_cast<size_t>(image.head_dim);
    if (plan.in_place() && n <= image.capacity) {  // appends and rewritten tails
      const size_t at = static_cast<size_t>(plan.kept_prefix) * d;
      upload(image.keys.data() + at, staged_keys.data(), sizeof(float) * staged_keys.size());
      upload(image.values.data() + at, staged_values.data(), sizeof(float) * staged_values.size());
    } else {
      const int64_t capacity = std::max<int64_t>({n, image.capacity + image.capacity / 2, 16});
      DeviceBuffer<float> keys(d * capacity), values(d * capacity);
      const size_t staged_bytes = sizeof(float) * staged_keys.size();
      const size_t source_at = 2 * align256(staged_bytes);
      DeviceBuffer<unsigned char> staging(source_at + sizeof(int32_t) * n);
      upload(staging.data(), staged_keys.data(), staged_bytes);
      upload(staging.data() + align256(staged_bytes), staged_values.data(), staged_bytes);
      upload(staging.data() + source_at, plan.source.data(), sizeof(int32_t) * n);
      if (n > 0) {
        const int threads = 256;
        const unsigned blocks = detail::grid_for(n * static_cast<int64_t>(d), threads, 8);
        gather_rows_kernel<<<blocks, threads>>>(
            reinterpret_cast<const int32_t*>(staging.data() + source_at), n, static_cast<int>(d),
            image.keys.data(), image.values.data(), reinterpret_cast<const float*>(staging.data()),
            reinterpret_cast<const float*>(staging.data() + align256(staged_bytes)), keys.data(),
            values.data());
        KVSIM_CUDA_CHECK_LAUNCH("gather_rows_kernel");
      }
      image.keys = std::move(keys);
      image.values = std::move(values);
      image.capacity = capacity;
      image.positions = DeviceBuffer<int32_t>(capacity);
      // `staging` is freed here: cudaFree waits for the gather.
    }
    upload(image.positions.data(), positions.data(), sizeof(int32_t) * n);
    image.rows = n;
  }

  ExactLayer exact_attention(const TraceMeta& meta, const LayerImage& base,
                             std::span<const int64_t> measured) override {
    select();
    const DeviceLayer& layer = static_cast<const DeviceLayer&>(base);
    const int hq = meta.num_q_heads, d = meta.head_dim;
    const size_t m = measured.size();
    ExactLayer ex;
    ex.slot = layer.slot;
    ex.out.resize(m * hq * d);
    ex.lse.resize(m * hq);
    ex.top1.resize(m * hq);
    if (m == 0) return ex;
    const size_t out_at = align256(sizeof(int64_t) * m);
    const size_t lse_at = out_at + align256(sizeof(float) * ex.out.size());
    const size_t top_at = lse_at + align256(sizeof(double) * ex.lse.size());
    DeviceBuffer<unsigned char> buffer(top_at + sizeof(int32_t) * ex.top1.size());
    unsigned char* base_ptr = buffer.data();
    upload(base_ptr, measured.data(), sizeof(int64_t) * m);
    ExactArgs a{layer.q.data(),
                layer.k.data(),
                layer.v.data(),
                reinterpret_cast<const int64_t*>(base_ptr),
                static_cast<int64_t>(m) * hq,
                layer.num_tokens,
                hq,
                meta.group_size(),
                meta.sliding_window[layer.slot],
                static_cast<float>(meta.attn_scale),
                reinterpret_cast<float*>(base_ptr + out_at),
                reinterpret_cast<double*>(base_ptr + lse_at),
                reinterpret_cast<int32_t*>(base_ptr + top_at)};
    KVSIM_DISPATCH_HEAD_DIM(d, kD, [&] {
      exact_attention_kernel<kD><<<blocks_for_warps(a.items), kWarpsPerBlock * kWarpSize>>>(a);
      KVSIM_CUDA_CHECK_LAUNCH("exact_attention_kernel");
    });
    download(ex.out.data(), a.out, sizeof(float) * ex.out.size());
    download(ex.lse.data(), a.lse, sizeof(double) * ex.lse.size());
    download(ex.top1.data(), a.top1, sizeof(int32_t) * ex.top1.size());
    return ex;
  }

  void prefill_column_sums(const PrefillCall& call, std::unique_ptr<ExecutorScratch>& scratch,
                           std::vector<float>& colsums) override {
    select();
    DeviceScratch& s = device_scratch(scratch);
    const PrefillLayout& layout = *call.layout;
    const size_t tasks = call.tasks.size();
    const int group = call.meta->group_size();
    const int64_t rows = layout.row_indptr.back(), sums = layout.colsum_indptr.back();
    colsums.assign(static_cast<size_t>(sums), 0.f);
    if (sums == 0) return;
    const size_t cand_at = align256(sizeof(PrefillDesc) * tasks);
    const size_t lse_at =
        cand_at + align256(sizeof(int32_t) * static_cast<size_t>(layout.candidate_indptr.back()));
    const size_t colsum_at = lse_at + align256(sizeof(double) * static_cast<size_t>(rows));
    const size_t end = colsum_at + sizeof(float) * static_cast<size_t>(sums);
    reserve(s.prefill, end);
    unsigned char* dev = s.prefill.data();
    s.host_descriptors.assign(cand_at + sizeof(int32_t) * layout.candidate_indptr.back(), 0);
    for (size_t t = 0; t < tasks; ++t) {
      const PrefillSumsTask& task = call.tasks[t];
      const DeviceLayer& layer = static_cast<const DeviceLayer&>(*call.layers[t]);
      const PrefillDesc desc{
          layer.q.data(),
          layer.k.data(),
          reinterpret_cast<const int32_t*>(dev + cand_at) + layout.candidate_indptr[t],
          layout.first_row[t],
          task.prompt_len,
          layout.row_indptr[t],
          layout.colsum_indptr[t],
          static_cast<int64_t>(task.candidates.size()),
          layer.num_tokens,
          task.kv_head,
          task.window,
          0};
      std::memcpy(s.host_descriptors.data() + t * sizeof(PrefillDesc), &desc, sizeof desc);
      std::memcpy(
          s.host_descriptors.data() + cand_at + sizeof(int32_t) * layout.candidate_indptr[t],
          task.candidates.data(), sizeof(int32_t) * task.candidates.size());
    }
    upload(dev, s.host_descriptors.data(), s.host_descriptors.size());
    PrefillArgs a{reinterpret_cast<const PrefillDesc*>(dev),
                  static_cast<int>(tasks),
                  group,
                  rows,
                  static_cast<float>(call.meta->attn_scale),
                  reinterpret_cast<double*>(dev + lse_at),
                  reinterpret_cast<float*>(dev + colsum_at)};
    KVSIM_DISPATCH_HEAD_DIM(call.meta->head_dim, kD, [&] {
      if (rows > 0) {
        prefill_row_lse_kernel<kD><<<blocks_for_warps(rows), kWarpsPerBlock * kWarpSize>>>(a);
        KVSIM_CUDA_CHECK_LAUNCH("prefill_row_lse_kernel");
      }
      a.items = sums;
      prefill_colsum_kernel<kD><<<blocks_for_warps(sums), kWarpsPerBlock * kWarpSize>>>(a);
      KVSIM_CUDA_CHECK_LAUNCH("prefill_colsum_kernel");
    });
    download(colsums.data(), dev + colsum_at, sizeof(float) * colsums.size());
  }

  void cache_attention(const RaggedCall& call, std::unique_ptr<ExecutorScratch>& scratch,
                       RaggedOutputs& outputs) override {
    select();
    DeviceScratch& s = device_scratch(scratch);
    const RaggedLayout& layout = *call.layout;
    const WorkspaceSizes sizes = workspace_sizes(layout, sizeof(TaskDesc));
    const WorkspaceSizes::Offsets at = sizes.offsets();
    reserve(s.workspace, at.end);
    unsigned char* dev = s.workspace.data();
    // Descriptors and exact log-sum-exps in one upload.
    s.host_descriptors.assign(at.exact_lse + sizeof(double) * sizes.exact_lse, 0);
    const size_t g = static_cast<size_t>(layout.group);
    for (size_t t = 0; t < call.tasks.size(); ++t) {
      const CacheAttentionTask& task = call.tasks[t];
      const DeviceLayer& layer = static_cast<const DeviceLayer&>(*call.layers[t]);
      const DeviceCache& cache = static_cast<const DeviceCache&>(*call.caches[t]);
      const TaskDesc desc{layer.q.data(),
                          layer.k.data(),
                          cache.keys.data(),
                          cache.values.data(),
                          cache.positions.data(),
                          layout.row_indptr[t],
                          cache.rows,
                          task.step,
                          layer.num_tokens,
                          task.kv_head,
                          layout.measured_slot[t],
                          0};
      std::memcpy(s.host_descriptors.data() + t * sizeof(TaskDesc), &desc, sizeof desc);
      if (layout.measured_slot[t] >= 0) {
        std::memcpy(
            s.host_descriptors.data() + at.exact_lse + sizeof(double) * g * layout.measured_slot[t],
            task.exact_lse, sizeof(double) * g);
      }
    }
    upload(dev, s.host_descriptors.data(), s.host_descriptors.size());
    const RaggedArgs a{reinterpret_cast<const TaskDesc*>(dev + at.descriptors),
                       static_cast<int64_t>(call.tasks.size()) * layout.group,
                       layout.group,
                       static_cast<float>(call.meta->attn_scale),
                       reinterpret_cast<const double*>(dev + at.exact_lse),
                       reinterpret_cast<float*>(dev + at.scores),
                       reinterpret_cast<float*>(dev + at.probs),
                       reinterpret_cast<double*>(dev + at.lse_hat),
                       reinterpret_cast<float*>(dev + at.out_hat),
                       reinterpret_cast<float*>(dev + at.kept_mass),
                       reinterpret_cast<float*>(dev + at.kept_cross),
                       reinterpret_cast<int32_t*>(dev + at.top1)};
    KVSIM_DISPATCH_HEAD_DIM(layout.head_dim, kD, [&] {
      ragged_cache_attention_kernel<kD>
          <<<blocks_for_warps(a.items), kWarpsPerBlock * kWarpSize>>>(a);
      KVSIM_CUDA_CHECK_LAUNCH("ragged_cache_attention_kernel");
    });
    download(outputs.scores.data(), a.scores, sizeof(float) * sizes.scores);
    download(outputs.probs.data(), a.probs, sizeof(float) * sizes.probs);
    download(outputs.lse_hat.data(), a.lse_hat, sizeof(double) * sizes.lse_hat);
    download(outputs.out_hat.data(), a.out_hat, sizeof(float) * sizes.out_hat);
    download(outputs.kept_mass.data(), a.kept_mass, sizeof(float) * sizes.kept_mass);
    download(outputs.kept_cross.data(), a.kept_cross, sizeof(float) * sizes.kept_cross);
    download(outputs.top1.data(), a.top1, sizeof(int32_t) * sizes.top1);
  }

 private:
  // The CUDA device is per host thread: every entry point selects it.
  void select() const { KVSIM_CUDA_CHECK(cudaSetDevice(device_)); }

  static DeviceScratch& device_scratch(std::unique_ptr<ExecutorScratch>& scratch) {
    if (!scratch) scratch = std::make_unique<DeviceScratch>();
    return static_cast<DeviceScratch&>(*scratch);
  }

  int device_;
  std::string name_;
};

}  // namespace

std::unique_ptr<AttentionExecutor> make_cuda_executor(int device) {
  return std::make_unique<CudaExecutor>(device);
}

size_t cuda_default_budget(int device) {
  require_cuda();
  KVSIM_CUDA_CHECK(cudaSetDevice(device));
  size_t free_bytes = 0, total_bytes = 0;
  KVSIM_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  return free_bytes / 2;
}

}  // namespace kvsim::gpu
