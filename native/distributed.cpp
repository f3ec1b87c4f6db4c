// The c10d process group behind data-parallel training (distributed.h): rendezvous, the collectives the
// training loop calls, and the heartbeats that name a rank that died or hung.
#include "distributed.h"

#include <cstdlib>
#include <sstream>

#if TORCHLEARN_DISTRIBUTED
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <unordered_map>
#include <unordered_set>
#if TORCHLEARN_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#endif

namespace tl::dist {

namespace {
std::string firstLine(const std::string& s) { return s.substr(0, s.find('\n')); }
std::string seconds(std::chrono::milliseconds t) {
  std::ostringstream o;
  o << static_cast<double>(t.count()) / 1000.0 << " s";
  return o.str();
}
}  // namespace

#if TORCHLEARN_DISTRIBUTED

// LibTorch 2 splits the process group into a front (ProcessGroup) and backends; the backend has the
// collectives this file calls, with the same signatures as 1.13's ProcessGroup.
#if TL_TORCH2
using Backend = c10d::Backend;
#else
using Backend = c10d::ProcessGroup;
#endif

// (a named namespace rather than an anonymous one: GradReducer::Impl, declared in the header, holds a State)
namespace detail {

constexpr int64_t kBucketBytes = 25 << 20;      // DDP's default bucket_cap_mb
constexpr int64_t kFirstBucketBytes = 1 << 20;  // DDP's first bucket: small, so that the first all-reduce starts early
constexpr auto kBeatEvery = std::chrono::milliseconds(1000);
// A rank whose heartbeat has not changed for this long is taken for dead while others wait on it: Gloo
// itself notices a vanished peer only when its timeout passes.
constexpr auto kSilentLimit = std::chrono::milliseconds(10000);

std::vector<uint8_t> bytesOf(const std::string& s) { return {s.begin(), s.end()}; }
std::string stringOf(const std::vector<uint8_t>& b) { return {b.begin(), b.end()}; }
std::string key(const char* what, int r) { return std::string("torchlearn/") + what + "/" + std::to_string(r); }

c10::intrusive_ptr<c10d::Store> connectStore(const Config& c, bool server, std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions o;
  o.port = static_cast<std::uint16_t>(c.masterPort);
  o.isServer = server && c.agentStorePrefix.empty();
  o.waitWorkers = false;  // (joining is counted below, so that a short world is reported with its count)
  o.timeout = timeout;
  auto tcp = c10::make_intrusive<c10d::TCPStore>(c.masterAddr, o);
  if (c.agentStorePrefix.empty()) return tcp;
  return c10::make_intrusive<c10d::PrefixStore>(c.agentStorePrefix, tcp);
}

struct State {
  Config cfg;
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<Backend> pg;
  torch::Device commDevice = torch::kCPU;  // where the small collectives' tensors go (the GPU for NCCL)
  std::atomic<int64_t> seq{0};             // collectives this rank has begun
  std::atomic<int64_t> gradNs{0}, gradReduces{0}, bucketsEarly{0}, buckets{0};
  std::string failure;  // once a collective failed, the group is broken: every later one throws this
  std::mutex failureMutex;

  // The heartbeat: every second this rank writes "<beats>:<collectives begun>" under torchlearn/beat/<rank>,
  // through a connection of its own, from a thread of its own (so a rank busy in a long step still beats).
  std::thread beat;
  std::mutex beatMutex;
  std::condition_variable beatCv;
  bool stopping = false;

  void startBeat() {
    auto client = connectStore(cfg, false, cfg.timeout);
    beat = std::thread([this, client] {
      int64_t beats = 0;
      std::unique_lock<std::mutex> lock(beatMutex);
      while (!stopping) {
        try {
          client->set(key("beat", cfg.rank), bytesOf(std::to_string(++beats) + ":" + std::to_string(seq.load())));
        } catch (...) {
          return;  // the store is gone (rank 0 exited): nothing left to beat for
        }
        beatCv.wait_for(lock, kBeatEvery, [this] { return stopping; });
      }
    });
  }
  void stopBeat() {
    {
      std::lock_guard<std::mutex> lock(beatMutex);
      stopping = true;
    }
    beatCv.notify_all();
    if (beat.joinable()) beat.join();
  }
  ~State() { stopBeat(); }

  // The other ranks' heartbeats as last read, and when each last changed (read by the thread waiting on a
  // collective, through the rendezvous connection, which nothing else uses after joining).
  std::vector<std::string> beats;
  std::vector<std::chrono::steady_clock::time_point> changed;
  std::mutex peersMutex;

  // Reads every other rank's heartbeat; returns the ranks silent for longer than `limit`. Throws when the
  // store does not answer (rank 0, its host, is gone).
  std::vector<int> silentPeers(std::chrono::milliseconds limit) {
    std::lock_guard<std::mutex> lock(peersMutex);
    const int w = cfg.world;
    const auto now = std::chrono::steady_clock::now();
    if (beats.empty()) {
      beats.assign(w, "");
      changed.assign(w, now);
    }
    std::vector<int> silent;
    for (int r = 0; r < w; r++) {
      if (r == cfg.rank) continue;
      const std::string b = store->check({key("beat", r)}) ? stringOf(store->get(key("beat", r))) : "";
      if (b != beats[r]) {
        beats[r] = b;
        changed[r] = now;
      } else if (now - changed[r] > limit) {
        silent.push_back(r);
      }
    }
    return silent;
  }

  std::string storeGone() const {
    if (cfg.rank != 0) return "rank 0 is gone: the rendezvous store it hosts at " + cfg.masterAddr + ":" + std::to_string(cfg.masterPort) + " no longer answers";
    return "the rendezvous store no longer answers";
  }

  static std::string listRanks(const std::vector<int>& v) {
    std::ostringstream o;
    o << (v.size() == 1 ? "rank " : "ranks ");
    for (size_t i = 0; i < v.size(); i++) o << (i ? ", " : "") << v[i];
    return o.str();
  }

  // Why a collective failed, from the heartbeats: ranks whose beat stood still are gone; if every rank
  // beats, those that have begun fewer collectives than this one are the ones that hang.
  std::string diagnose() {
    std::vector<int> gone, behind;
    try {
      silentPeers(kSilentLimit);
      std::this_thread::sleep_for(kBeatEvery * 3);
      gone = silentPeers(kBeatEvery * 2);
    } catch (...) {
      return storeGone();
    }
    if (!gone.empty()) return listRanks(gone) + (gone.size() == 1 ? " is" : " are") + " gone (the process exited, was killed, or stopped responding)";
    const int64_t mine = seq.load();
    {
      std::lock_guard<std::mutex> lock(peersMutex);
      for (int r = 0; r < cfg.world; r++) {
        const auto colon = beats[r].find(':');
        if (r != cfg.rank && colon != std::string::npos && std::atoll(beats[r].c_str() + colon + 1) < mine) behind.push_back(r);
      }
    }
    if (!behind.empty())
      return listRanks(behind) + " did not reach this collective within " + seconds(cfg.timeout) + " (alive, but hung or slower than the timeout; TORCHLEARN_DIST_TIMEOUT sets it)";
    return "every rank still answers; the transport failed";
  }

  // Waits for a collective, watching the other ranks meanwhile: one silent for kSilentLimit ends the wait
  // with its name, rather than after the full timeout.
  void wait(const c10::intrusive_ptr<c10d::Work>& work) {
    auto lastLook = std::chrono::steady_clock::now();
    for (;;) {
      try {
        work->wait(std::chrono::milliseconds(200));
        return;
      } catch (...) {
        // The short wait ran out (LibTorch throws for that too), or the collective failed. Completed by now,
        // it is one or the other: a wait without limit returns, or rethrows the collective's own error.
        if (work->isCompleted()) {
          work->wait();
          return;
        }
      }
      if (std::chrono::steady_clock::now() - lastLook < kBeatEvery) continue;
      lastLook = std::chrono::steady_clock::now();
      std::vector<int> silent;
      try {
        silent = silentPeers(kSilentLimit);
      } catch (...) {
        throw std::runtime_error(storeGone());
      }
      if (!silent.empty())
        throw std::runtime_error("no heartbeat from " + listRanks(silent) + " for " + seconds(std::chrono::duration_cast<std::chrono::milliseconds>(kSilentLimit)));
    }
  }
};

std::mutex gMutex;
std::shared_ptr<State> gState;

std::shared_ptr<State> current() {
  std::lock_guard<std::mutex> lock(gMutex);
  return gState && gState->pg ? gState : nullptr;
}

// Runs one collective; a failure is explained (which rank) and breaks the group for good, so that no rank
// waits on a collective that can no longer complete.
template <typename F>
void collective(State& s, const char* what, F f) {
  {
    std::lock_guard<std::mutex> lock(s.failureMutex);
    if (!s.failure.empty()) throw UserError(s.failure);
  }
  s.seq++;
  try {
    f();
  } catch (const std::exception& e) {
    std::ostringstream m;
    m << "distributed training stopped on rank " << s.cfg.rank << " of " << s.cfg.world << " during " << what << ": " << s.diagnose() << ". ("
      << firstLine(e.what()) << ") Every rank stops; once the cause is fixed, start the run again (fit's resume continues from rank 0's last checkpoint).";
    std::lock_guard<std::mutex> lock(s.failureMutex);
    s.failure = m.str();
    throw UserError(s.failure);
  }
}

std::shared_ptr<::gloo::transport::Device> glooDevice(const Config& c) {
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname) return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
  // one machine: stay on the loopback interface rather than whatever the host name resolves to
  if (c.masterAddr == "127.0.0.1" || c.masterAddr == "localhost") return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

}  // namespace detail
using namespace detail;

bool compiled() { return true; }
bool ncclCompiled() {
#if TORCHLEARN_NCCL
  return true;
#else
  return false;
#endif
}

void init(const Config& c) {
  std::lock_guard<std::mutex> lock(gMutex);
  if (gState)
    throw UserError("distributed: this process already joined a group (rank " + std::to_string(gState->cfg.rank) + " of " + std::to_string(gState->cfg.world) +
                    "); a process joins once");
  if (c.world < 1) throw UserError("distributed: WORLD_SIZE must be at least 1, got " + std::to_string(c.world));
  if (c.rank < 0 || c.rank >= c.world) throw UserError("distributed: RANK must be in [0, WORLD_SIZE), got RANK=" + std::to_string(c.rank) + " WORLD_SIZE=" + std::to_string(c.world));
  if (c.masterPort < 1 || c.masterPort > 65535) throw UserError("distributed: MASTER_PORT must be a port number (1-65535), got " + std::to_string(c.masterPort));
  if (c.backend != "gloo" && c.backend != "nccl") throw UserError("distributed: the backend must be 'gloo' or 'nccl', got '" + c.backend + "'");
  if (c.backend == "nccl" && !ncclCompiled())
    throw UserError("distributed: this addon was built without NCCL (it needs a CUDA LibTorch that has it: PyTorch's own builds do); use the 'gloo' backend");
  auto st = std::make_shared<State>();
  st->cfg = c;
  const std::string where = c.masterAddr + ":" + std::to_string(c.masterPort);
  try {
    st->store = connectStore(c, c.rank == 0, c.timeout);
  } catch (const std::exception& e) {
    if (c.rank == 0 && c.agentStorePrefix.empty())
      throw UserError("distributed: rank 0 cannot listen at MASTER_ADDR:MASTER_PORT = " + where +
                      ": the port is in use, or the address is not one of this machine's. Choose a free port (MASTER_PORT), or let `torchlearn launch` pick one. (" +
                      firstLine(e.what()) + ")");
    throw UserError("distributed: rank " + std::to_string(c.rank) + " could not reach rank 0's store at " + where + " within " + seconds(c.timeout) +
                    ": start rank 0, and give every rank the same MASTER_ADDR and MASTER_PORT. (" + firstLine(e.what()) + ")");
  }
  // Each rank claims its number, then waits for the whole world, so that a world that never assembles is
  // reported with how far it got.
  if (st->store->add(key("rank", c.rank), 1) > 1)
    throw UserError("distributed: two processes were started with RANK=" + std::to_string(c.rank) + ": give each rank its own number in [0, WORLD_SIZE)");
  st->store->add("torchlearn/joined", 1);
  const auto deadline = std::chrono::steady_clock::now() + c.timeout;
  for (;;) {
    const int64_t joined = st->store->add("torchlearn/joined", 0);
    if (joined >= c.world) break;
    if (std::chrono::steady_clock::now() > deadline)
      throw UserError("distributed: only " + std::to_string(joined) + " of WORLD_SIZE=" + std::to_string(c.world) + " ranks joined at " + where + " within " +
                      seconds(c.timeout) + ": start every rank, or set WORLD_SIZE to the number started (TORCHLEARN_DIST_TIMEOUT sets the wait)");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>("torchlearn/pg", st->store);
  try {
    if (c.backend == "gloo") {
      auto o = c10d::ProcessGroupGloo::Options::create(c.timeout);
      o->devices.push_back(glooDevice(c));
      o->threads = 2;
      st->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, c.rank, c.world, o);
    } else {
#if TORCHLEARN_NCCL
      const char* local = std::getenv("LOCAL_RANK");
      st->commDevice = torch::Device(torch::kCUDA, local ? static_cast<c10::DeviceIndex>(std::atoi(local)) : 0);
      auto o = c10d::ProcessGroupNCCL::Options::create();
      o->timeout = c.timeout;
      st->pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, c.rank, c.world, o);
#endif
    }
  } catch (const std::exception& e) {
    throw UserError("distributed: rank " + std::to_string(c.rank) + " could not connect to the other ranks (" + c.backend + "): " + firstLine(e.what()));
  }
  st->startBeat();
  gState = st;
}

bool active() { return current() != nullptr; }
int rank() {
  std::lock_guard<std::mutex> lock(gMutex);
  return gState ? gState->cfg.rank : 0;
}
int world() {
  std::lock_guard<std::mutex> lock(gMutex);
  return gState ? gState->cfg.world : 1;
}
std::string backend() {
  std::lock_guard<std::mutex> lock(gMutex);
  return gState ? gState->cfg.backend : "";
}

void shutdown() {
  std::shared_ptr<State> st;
  {
    std::lock_guard<std::mutex> lock(gMutex);
    st.swap(gState);
  }
  if (st) st->stopBeat();
}

struct GradReducer::Impl : std::enable_shared_from_this<GradReducer::Impl> {
  std::mutex m;
  std::vector<torch::Tensor> params;  // trainable, in the order backward produces their gradients
  std::unordered_map<const void*, size_t> indexOf;
  std::vector<std::vector<size_t>> buckets;
  std::vector<size_t> bucketOf;
  // the accumulators the hooks live on, kept alive (autograd itself holds them only while a graph does)
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;
  std::unordered_set<const void*> hooked;
  // one armed backward
  std::shared_ptr<State> state;
  bool armed = false;
  std::vector<char> isReady;
  std::vector<size_t> pending;
  size_t next = 0;
  std::vector<torch::Tensor> flats;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  std::string error;

  void rebucket(const std::vector<torch::Tensor>& trainable) {
    params = trainable;
    indexOf.clear();
    buckets.clear();
    bucketOf.assign(params.size(), 0);
    int64_t bytes = 0;
    for (size_t i = 0; i < params.size(); i++) {
      const auto& p = params[i];
      indexOf[p.unsafeGetTensorImpl()] = i;
      const int64_t cap = buckets.size() <= 1 ? kFirstBucketBytes : kBucketBytes;
      const bool fresh = buckets.empty() || bytes >= cap || params[buckets.back().front()].scalar_type() != p.scalar_type() ||
                         params[buckets.back().front()].device() != p.device();
      if (fresh) {
        buckets.emplace_back();
        bytes = 0;
      }
      buckets.back().push_back(i);
      bucketOf[i] = buckets.size() - 1;
      bytes += p.numel() * static_cast<int64_t>(p.element_size());
      const void* key = p.unsafeGetTensorImpl();
      if (hooked.count(key)) continue;
      auto acc = torch::autograd::impl::grad_accumulator(p);
      if (!acc) continue;  // (not a leaf that requires grad: finish reduces it after backward)
      std::weak_ptr<Impl> self = weak_from_this();
      acc->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
          [self, key](const torch::autograd::variable_list& outputs, const torch::autograd::variable_list&) {
            if (auto impl = self.lock()) impl->ready(key);
            return outputs;
          }));
      accumulators.push_back(std::move(acc));
      hooked.insert(key);
    }
  }

  // (under m) the bucket's gradients, flattened, and its all-reduce started
  void launch(size_t b, bool duringBackward) {
    state->buckets++;
    if (duringBackward) state->bucketsEarly++;
    std::vector<torch::Tensor> parts;
    for (size_t i : buckets[b]) {
      const auto g = params[i].grad();
      parts.push_back(g.defined() ? g.detach().reshape({-1}) : torch::zeros({params[i].numel()}, params[i].options().requires_grad(false)));
    }
    std::vector<torch::Tensor> one{torch::cat(parts)};
    flats[b] = one[0];
    if (!error.empty()) return;
    try {
      state->seq++;
      works[b] = state->pg->allreduce(one);
    } catch (const std::exception& e) {
      error = e.what();
    }
  }

  // (under m) buckets for these trainable parameters (again only when they changed), all waiting for their
  // gradients
  void arm(std::shared_ptr<State> st, const std::vector<torch::Tensor>& trainable) {
    bool same = trainable.size() == params.size();
    for (size_t i = 0; same && i < trainable.size(); i++) same = trainable[i].unsafeGetTensorImpl() == params[i].unsafeGetTensorImpl();
    if (!same) rebucket(trainable);
    state = std::move(st);
    isReady.assign(params.size(), 0);
    pending.clear();
    for (auto& b : buckets) pending.push_back(b.size());
    next = 0;
    flats.assign(buckets.size(), torch::Tensor());
    works.assign(buckets.size(), c10::intrusive_ptr<c10d::Work>());
    error.clear();
    armed = true;
  }

  // a gradient accumulator's hook: this parameter's gradient is final for this backward
  void ready(const void* key) {
    std::lock_guard<std::mutex> lock(m);
    if (!armed) return;
    auto it = indexOf.find(key);
    if (it == indexOf.end() || isReady[it->second]) return;
    isReady[it->second] = 1;
    if (--pending[bucketOf[it->second]] > 0) return;
    while (next < buckets.size() && pending[next] == 0) launch(next++, true);
  }
};

GradReducer::GradReducer() : impl_(std::make_shared<Impl>()) {}

void GradReducer::prepare(const std::vector<torch::Tensor>& trainable) {
  auto st = current();
  if (!st) return;
  std::lock_guard<std::mutex> lock(impl_->m);
  impl_->arm(std::move(st), trainable);
}

void GradReducer::finish(const std::vector<torch::Tensor>& trainable) {
  auto s = current();
  if (!s) return;
  auto& r = *impl_;
  {
    std::lock_guard<std::mutex> lock(r.m);
    if (!r.armed || r.state != s) r.arm(s, trainable);  // (no prepare before this backward: every bucket starts now)
    while (r.next < r.buckets.size()) r.launch(r.next++, false);  // (buckets whose gradients did not all arrive)
    r.armed = false;
  }
  collective(*s, "the gradient all-reduce", [&] {
    const auto t0 = std::chrono::steady_clock::now();
    if (!r.error.empty()) throw std::runtime_error(r.error);
    torch::NoGradGuard ng;
    for (size_t b = 0; b < r.buckets.size(); b++) {
      s->wait(r.works[b]);
      r.flats[b].div_(s->cfg.world);
      int64_t off = 0;
      for (size_t i : r.buckets[b]) {
        auto& p = r.params[i];
        if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
        p.grad().copy_(r.flats[b].narrow(0, off, p.numel()).view(p.grad().sizes()));
        off += p.numel();
      }
    }
    r.flats.assign(r.buckets.size(), torch::Tensor());
    s->gradNs += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
    s->gradReduces++;
  });
}

void broadcastFromRank0(const std::vector<torch::Tensor>& tensors) {
  auto s = current();
  if (!s || tensors.empty()) return;
  collective(*s, "the broadcast of rank 0's weights", [&] {
    torch::NoGradGuard ng;
    // one flat tensor per dtype and device (parameters, running statistics, batch counters)
    std::vector<std::vector<torch::Tensor>> groups;
    for (const auto& t : tensors) {
      auto it = std::find_if(groups.begin(), groups.end(), [&](const std::vector<torch::Tensor>& g) {
        return g.front().scalar_type() == t.scalar_type() && g.front().device() == t.device();
      });
      if (it == groups.end()) groups.push_back({t});
      else it->push_back(t);
    }
    for (auto& g : groups) {
      std::vector<torch::Tensor> parts;
      for (auto& t : g) parts.push_back(t.reshape({-1}));
      std::vector<torch::Tensor> one{torch::cat(parts)};
      s->wait(s->pg->broadcast(one));
      int64_t off = 0;
      for (auto& t : g) {
        t.copy_(one[0].narrow(0, off, t.numel()).view(t.sizes()));
        off += t.numel();
      }
    }
  });
}

torch::Tensor allreduce(const torch::Tensor& t, bool max) {
  auto s = current();
  if (!s) return t;
  torch::Tensor out;
  collective(*s, max ? "an all-reduce (maximum)" : "an all-reduce (sum)", [&] {
    std::vector<torch::Tensor> one{t.to(s->commDevice).contiguous().clone()};
    c10d::AllreduceOptions o;
    if (max) o.reduceOp = c10d::ReduceOp::MAX;
    s->wait(s->pg->allreduce(one, o));
    out = one[0].to(t.device());
  });
  return out;
}

torch::Tensor allgatherRows(const torch::Tensor& rows, int64_t maxRows) {
  auto s = current();
  if (!s) return rows.unsqueeze(0);
  if (rows.size(0) > maxRows) throw UserError("allgatherRows: " + std::to_string(rows.size(0)) + " rows, more than maxRows " + std::to_string(maxRows));
  torch::Tensor out;
  collective(*s, "the gathering of the validation predictions", [&] {
    auto shape = rows.sizes().vec();
    shape[0] = maxRows;
    auto padded = torch::zeros(shape, rows.options().device(s->commDevice));
    padded.narrow(0, 0, rows.size(0)).copy_(rows);
    std::vector<std::vector<torch::Tensor>> outs(1);
    for (int r = 0; r < s->cfg.world; r++) outs[0].push_back(torch::empty_like(padded));
    std::vector<torch::Tensor> in{padded};
    s->wait(s->pg->allgather(outs, in));
    out = torch::stack(outs[0]).to(rows.device());
  });
  return out;
}

Stats stats() {
  Stats out;
  if (auto s = current()) {
    out.gradSeconds = static_cast<double>(s->gradNs.load()) * 1e-9;
    out.gradReduces = s->gradReduces.load();
    out.bucketsDuringBackward = s->bucketsEarly.load();
    out.buckets = s->buckets.load();
  }
  return out;
}

#else  // built without c10d

namespace {
[[noreturn]] void missing() {
  throw UserError(
      "distributed: this addon was built without LibTorch's c10d and Gloo headers. On Debian: apt-get install libgloo-dev, then rebuild (npm run build:native)");
}
}  // namespace

struct GradReducer::Impl {};
GradReducer::GradReducer() = default;
void GradReducer::prepare(const std::vector<torch::Tensor>&) {}
void GradReducer::finish(const std::vector<torch::Tensor>&) {}
bool compiled() { return false; }
bool ncclCompiled() { return false; }
void init(const Config& c) {
  if (c.world > 1) missing();
}
bool active() { return false; }
int rank() { return 0; }
int world() { return 1; }
std::string backend() { return ""; }
void shutdown() {}
void broadcastFromRank0(const std::vector<torch::Tensor>&) {}
torch::Tensor allreduce(const torch::Tensor& t, bool) { return t; }
torch::Tensor allgatherRows(const torch::Tensor& rows, int64_t) { return rows.unsqueeze(0); }
Stats stats() { return {}; }

#endif

}  // namespace tl::dist

// ---------------------------------------------------------------------------------------------------------
// The JavaScript entry points (src/distributed/group.ts).
#include "js.h"

namespace tl {

// distInit({ rank, worldSize, masterAddr, masterPort, timeoutMs, backend }) -> Promise<void>: joins the group
// on a thread of its own (the rendezvous waits for the other ranks).
Napi::Value DistInit(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  js::Options o(info[0], "distInit: options");
  dist::Config c;
  c.world = static_cast<int>(o.integer("worldSize", 1, 1 << 20));
  c.rank = static_cast<int>(o.integer("rank", 0, c.world - 1));
  c.masterAddr = o.string("masterAddr");
  if (c.masterAddr.empty() || c.masterAddr.size() > 255) throw UserError("distInit: masterAddr must be a host name or address");
  c.masterPort = static_cast<int>(o.integer("masterPort", 1, 65535));
  c.timeout = std::chrono::milliseconds(o.integer("timeoutMs", 1, int64_t{1} << 40));
  c.backend = o.string("backend");
  c.agentStorePrefix = o.optString("agentStorePrefix").value_or("");
  if (c.agentStorePrefix.size() > 256) throw UserError("distInit: agentStorePrefix is too long");
  static Worker joiner;  // (not the CPU worker: a learner's work there must not wait behind a rendezvous)
  return runAsync<bool>(
      env, joiner, [c]() { dist::init(c); return true; }, [](Napi::Env env, bool&) -> Napi::Value { return env.Undefined(); });
  TL_CATCH(env)
}

// distInfo() -> { compiled, nccl, rank, worldSize, backend, gradSeconds, gradReduces, bucketsDuringBackward, buckets }
Napi::Value DistInfo(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  auto o = Napi::Object::New(env);
  o.Set("compiled", dist::compiled());
  o.Set("nccl", dist::ncclCompiled());
  o.Set("rank", dist::rank());
  o.Set("worldSize", dist::world());
  o.Set("backend", dist::backend());
  const auto s = dist::stats();
  o.Set("gradSeconds", s.gradSeconds);
  o.Set("gradReduces", Napi::Number::New(env, static_cast<double>(s.gradReduces)));
  o.Set("bucketsDuringBackward", Napi::Number::New(env, static_cast<double>(s.bucketsDuringBackward)));
  o.Set("buckets", Napi::Number::New(env, static_cast<double>(s.buckets)));
  return o;
  TL_CATCH(env)
}

// distAllreduce(values: Float64Array, op: 'sum' | 'max') -> Promise<Float64Array>: the element-wise sum or
// maximum over the ranks (a few numbers the TypeScript side must agree on). The values are copied here.
Napi::Value DistAllreduce(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  TL_TRY
  auto values = js::copyTyped<double>(info[0], "distAllreduce: values", torch::kFloat64);
  if (values.numel() > (1 << 20)) throw UserError("distAllreduce: at most 2^20 values");
  const std::string op = js::string(info[1], "distAllreduce: op");
  if (op != "sum" && op != "max") throw UserError("distAllreduce: op must be 'sum' or 'max', got '" + op + "'");
  return runAsync<torch::Tensor>(
      env, cpuWorker(), [values, op]() { return dist::allreduce(values, op == "max"); },
      [](Napi::Env env, torch::Tensor& t) -> Napi::Value { return js::typed<double>(env, t); });
  TL_CATCH(env)
}

// distShutdown(): leaves the group (also done as the process exits).
Napi::Value DistShutdown(const Napi::CallbackInfo& info) {
  dist::shutdown();
  return info.Env().Undefined();
}

}  // namespace tl
