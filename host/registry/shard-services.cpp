#include "host/registry/shard-services.h"

#include "host/outbound/outbound.h"
#include "host/pools/key-store.h"
#include "host/pools/sql-pool.h"
#include "host/pools/worker-pool.h"
#include "host/util/errors.h"

#include <payhost/plugin.h>

#include <capnp/membrane.h>
#include <capnp/serialize.h>
#include <kj/debug.h>
#include <kj/list.h>

#include <deque>

namespace payhost::host {

namespace {

// A membrane that is cut all at once when the instance goes.
class RevocablePolicy final : public capnp::MembranePolicy, public kj::Refcounted {
public:
  RevocablePolicy() {
    auto paf = kj::newPromiseAndFulfiller<void>();
    revoked = paf.promise.fork();
    fulfiller = kj::mv(paf.fulfiller);
  }

  kj::Maybe<capnp::Capability::Client> inboundCall(uint64_t, uint16_t,
                                                   capnp::Capability::Client) override {
    return nullptr;
  }
  kj::Maybe<capnp::Capability::Client> outboundCall(uint64_t, uint16_t,
                                                    capnp::Capability::Client) override {
    return nullptr;
  }
  kj::Own<capnp::MembranePolicy> addRef() override { return kj::addRef(*this); }
  kj::Maybe<kj::Promise<void>> onRevoked() override { return revoked.addBranch(); }

  // Rejects with the reason when the membrane is revoked; never resolves otherwise.
  kj::Promise<void> whenRevoked() {
    return revoked.addBranch().then([]() {
      kj::throwFatalException(KJ_EXCEPTION(FAILED, "a membrane's revocation only rejects"));
    });
  }

  void revoke(kj::Exception reason) {
    if (fulfiller->isWaiting()) fulfiller->reject(kj::mv(reason));
  }

private:
  kj::ForkedPromise<void> revoked = nullptr;
  kj::Own<kj::PromiseFulfiller<void>> fulfiller;
};

class ShardClock final : public Clock {
public:
  explicit ShardClock(kj::Timer& timer) : timer_(timer) {}
  kj::Date now() override { return kj::systemPreciseCalendarClock().now(); }
  kj::Timer& timer() override { return timer_; }

private:
  kj::Timer& timer_;
};

// Exceptions from plugin code point into the plugin's read-only data (the file name); copy them
// into host memory so they can outlive the library.
kj::Exception copyIntoHost(kj::Exception&& e) {
  kj::Exception copy(e.getType(), "(plugin)", e.getLine(), kj::heapString(e.getDescription()));
  return copy;
}

// Counts plugin code handed to another thread (offloaded work, a transaction) until the returned
// object goes: the deployer closes the library only once `offloadsPending` is 0, so destroy the
// plugin's function before this.
auto pinPendingWork(Generation& generation) {
  generation.offloadsPending.fetch_add(1, std::memory_order_relaxed);
  return kj::defer([g = generation.addRef()]() mutable {
    g->offloadsPending.fetch_sub(1, std::memory_order_release);
  });
}

// A plugin's view of one database pool: transactions count against its quota and keep its library
// loaded while they may still run its code.
class PluginDatabase final : public Database {
public:
  PluginDatabase(Generation& generation, SqlPool& pool, kj::Timer& timer)
      : generation(generation), pool(pool), timer(timer) {}

  kj::StringPtr name() override { return pool.name(); }
  SqlDialect dialect() override { return pool.dialect(); }

  kj::Promise<void> transactionWork(kj::Function<void(SqlTransaction&)> work) override {
    auto pending = pinPendingWork(generation);
    return pool.transaction(
        generation.name(), timer,
        [work = kj::mv(work), pending = kj::mv(pending)](SqlTransaction& tx) mutable {
          KJ_DEFER({ auto gone = kj::mv(work); });
          work(tx);
        },
        generation.id());
  }

private:
  Generation& generation;
  SqlPool& pool;
  kj::Timer& timer;
};

// Calls a plugin makes to other services of this host: trusted, named "plugin:NAME".
class PluginCaller final : public Caller {
public:
  explicit PluginCaller(kj::StringPtr plugin) : identity_(kj::str("plugin:", plugin)) {}
  kj::StringPtr identity() override { return identity_; }
  kj::Maybe<kj::Exception> callStarting(kj::StringPtr, uint64_t, uint16_t) override {
    return nullptr;
  }
  void callEnded() override {}

private:
  kj::String identity_;
};

// Where a struct's data section begins: what a plugin's `Context::caller(call)` names its call by
// (`Context::callerOf`); null for a null pointer.
const void* structLocation(capnp::AnyPointer::Reader pointer) {
  if (pointer.isNull()) return nullptr;
  return capnp::AnyStruct::Reader(pointer.getAs<capnp::AnyStruct>()).getDataSection().begin();
}

}  // namespace

// What a plugin instance sees of the host.
class HostContext final : public Context {
public:
  HostContext(Generation& generation, ShardServices& services, LogSink& sink, kj::Timer& timer,
              uint32_t shardIndex, uint32_t shardCount)
      : generation(generation),
        services(services),
        logger(sink, {{"plugin", generation.name()},
                      {"version", generation.version()},
                      {"shard", kj::str(shardIndex)}}),
        clock_(timer),
        timer(timer),
        shardIndex_(shardIndex),
        shardCount_(shardCount) {}

  kj::StringPtr pluginName() override { return generation.name(); }
  kj::StringPtr pluginVersion() override { return generation.version(); }
  uint32_t shardIndex() override { return shardIndex_; }
  uint32_t shardCount() override { return shardCount_; }
  Logger& log() override { return logger; }
  const Config& config() override { return generation.config(); }
  Clock& clock() override { return clock_; }
  capnp::Capability::Client serviceCapability(kj::StringPtr name) override {
    // A name is either remote or local (the registry refuses a plugin providing a remote name).
    KJ_IF_MAYBE (outbound, services.outbound()) {
      KJ_IF_MAYBE (remote, outbound->tryRoute(name, generation.name())) {
        return kj::mv(*remote);
      }
    }
    return services.route(name, kj::refcounted<PluginCaller>(generation.name()));
  }

  kj::StringPtr callerOf(const void* paramsLocation) override {
    return services.callerOf(paramsLocation);
  }

  KeyHandle& keys(kj::StringPtr name) override {
    bool granted = false;
    for (auto& key : generation.keyGrants)
      granted = granted || key == name;
    if (!granted) {
      PAYHOST_FAIL(FAILED, "plugin ", generation.name(), " was not granted key '", name,
                   "' (list it in keys = [...] of the plugin's [[plugin]] entry)");
    }
    KJ_IF_MAYBE (handle,
                 services.shared().keys == nullptr ? nullptr : services.shared().keys->find(name)) {
      return *handle;
    }
    PAYHOST_FAIL(FAILED, "no key '", name, "' is configured ([keys.", name, "])");
  }

  Database& sql(kj::StringPtr name) override {
    auto key = std::string(name.cStr());
    auto it = databases.find(key);
    if (it != databases.end()) return *it->second;
    bool granted = false;
    for (auto& database : generation.databaseGrants)
      granted = granted || database == name;
    if (!granted) {
      PAYHOST_FAIL(FAILED, "plugin ", generation.name(), " was not granted database '", name,
                   "' (list it in databases = [...] of the plugin's [[plugin]] entry)");
    }
    for (auto& pool : services.shared().databases) {
      if (pool->name() == name) {
        return *databases.emplace(key, kj::heap<PluginDatabase>(generation, *pool, timer))
                    .first->second;
      }
    }
    PAYHOST_FAIL(FAILED, "no database '", name, "' is configured ([databases.", name, "])");
  }

  kj::Promise<void> offloadWork(kj::Function<void()> work) override {
    auto pool = services.shared().workers;
    if (pool == nullptr) return KJ_EXCEPTION(FAILED, "this host has no worker pool");
    auto pending = pinPendingWork(generation);
    return pool->run(
        generation.name(), timer,
        [work = kj::mv(work), pending = kj::mv(pending)]() mutable {
          // The plugin's function goes before `pending` can release the library.
          KJ_DEFER({ auto gone = kj::mv(work); });
          work();
        },
        generation.id());
  }

private:
  Generation& generation;
  ShardServices& services;
  ScopedLogger logger;
  ShardClock clock_;
  kj::Timer& timer;
  uint32_t shardIndex_;
  uint32_t shardCount_;
  std::map<std::string, kj::Own<PluginDatabase>> databases;
};

// Shard-local. One per instance: how many of its calls run on this shard and, when the plugin
// has an admission limit, the calls waiting for a turn, first come first served. Refcounted so
// that a call finishing after its instance went can still give its turn back.
struct Admission : public kj::Refcounted {
  uint32_t running = 0;
  std::deque<kj::Own<kj::PromiseFulfiller<void>>> queue;

  // A finished call hands its turn to the first waiter still waiting, if any.
  void release(Generation& generation) {
    while (!queue.empty()) {
      auto next = kj::mv(queue.front());
      queue.pop_front();
      generation.admissionQueued.fetch_sub(1, std::memory_order_relaxed);
      if (next->isWaiting()) {
        next->fulfill();
        return;
      }
    }
    --running;
  }

  // Calls cancelled while they waited leave their place in the queue only here (and in
  // `release`), so a full queue is checked again without them.
  void dropCancelled(Generation& generation) {
    auto dropped = std::erase_if(queue, [](auto& waiting) { return !waiting->isWaiting(); });
    generation.admissionQueued.fetch_sub(dropped, std::memory_order_relaxed);
  }
};

// A call in flight into a plugin instance, routed by name (see HostCallContext): listed on its
// instance while it lives, so that `Context::caller(call)`, which names a call by where its
// parameters are, finds it. No two live calls share that address: each holds its own copy of its
// parameters. Shard-local.
class RoutedCall {
public:
  // The caller's identity (see Caller::identity; "host" for host code).
  virtual kj::StringPtr identity() = 0;
  // Where the call's parameter struct begins, while the call holds its parameters; else null.
  virtual const void* paramsLocation() = 0;

  kj::ListLink<RoutedCall> link;

protected:
  ~RoutedCall() noexcept(false) = default;
};
using RoutedCalls = kj::List<RoutedCall, &RoutedCall::link>;

struct ShardServices::Instance {
  // Declared first so it is destroyed last: the plugin's objects go before the generation's
  // reference (and with it, possibly, the library).
  kj::Own<Generation> generation;
  kj::Own<HostContext> context;
  kj::Own<RevocablePolicy> policy = kj::refcounted<RevocablePolicy>();
  Plugin* plugin = nullptr;
  std::map<std::string, capnp::Capability::Client> capabilities;
  kj::Own<Admission> admission = kj::refcounted<Admission>();
  // Its calls in flight; each removes itself, and those still held elsewhere go with it. Mutable:
  // looking a caller up (a const query) caches where each call's parameters are.
  mutable RoutedCalls calls;

  ~Instance() noexcept(false) {
    for (auto& call : calls)
      calls.remove(call);
    policy->revoke(KJ_EXCEPTION(DISCONNECTED, "service was replaced or unloaded",
                                generation->name(), generation->version()));
    for (auto& waiting : admission->queue) {
      if (waiting->isWaiting()) {
        waiting->reject(KJ_EXCEPTION(DISCONNECTED, "service was replaced or unloaded",
                                     generation->name(), generation->version()));
      }
    }
    capabilities.clear();
    if (plugin != nullptr) generation->descriptor().destroy(plugin);
  }
};

// Shard-local, refcounted so that routes held by clients stay valid after the shard's services
// are cleared (their calls then fail with DISCONNECTED).
struct ShardServices::Entry : public kj::Refcounted {
  explicit Entry(kj::StringPtr name) : name(kj::heapString(name)) {}
  kj::String name;
  ShardServices* owner = nullptr;
  // The instance serving the name now, and its membraned capability for it.
  Instance* instance = nullptr;
  const ServiceDeclaration* declaration = nullptr;
  kj::Maybe<capnp::Capability::Client> capability;
  // A canary: `canaryPercent` of new calls go to this instance instead.
  Instance* canary = nullptr;
  kj::Maybe<capnp::Capability::Client> canaryCapability;
  uint32_t canaryPercent = 0;
  uint32_t callCounter = 0;
  // Which of its generation's services each instance serves here (for its method counters).
  size_t serviceIndex = 0;
  size_t canaryServiceIndex = 0;

  void route(Instance* to, kj::StringPtr service) {
    instance = to;
    declaration = nullptr;
    capability = nullptr;
    serviceIndex = 0;
    if (to == nullptr) return;
    auto declared = to->generation->services();
    for (size_t i = 0; i < declared.size(); ++i) {
      if (declared[i].name == service) {
        declaration = &declared[i];
        serviceIndex = i;
      }
    }
    capability = to->capabilities.at(std::string(service.cStr()));
  }
};

// Classifies a failed call for the metrics; every failure also counts in `failed` of the
// generation and the host.
void countFailure(MethodCounters& method, kj::Exception::Type type) {
  switch (type) {
    case kj::Exception::Type::OVERLOADED:
      method.overloaded.fetch_add(1, std::memory_order_relaxed);
      break;
    case kj::Exception::Type::DISCONNECTED:
      method.disconnected.fetch_add(1, std::memory_order_relaxed);
      break;
    case kj::Exception::Type::UNIMPLEMENTED:
      method.unimplemented.fetch_add(1, std::memory_order_relaxed);
      break;
    case kj::Exception::Type::FAILED:
      method.failed.fetch_add(1, std::memory_order_relaxed);
      break;
  }
}

namespace {

// Capabilities in a call's parameters come from outside the plugin: the plugin gets them behind
// its instance's membrane, so revoking the membrane also cuts the plugin's calls on them.
class ParamsCapTable final : public capnp::_::CapTableReader {
public:
  explicit ParamsCapTable(capnp::MembranePolicy& policy) : policy(policy) {}

  capnp::AnyPointer::Reader imbue(capnp::AnyPointer::Reader reader) {
    auto internal = capnp::_::PointerHelpers<capnp::AnyPointer>::getInternalReader(reader);
    inner = internal.getCapTable();
    return capnp::AnyPointer::Reader(internal.imbue(this));
  }

  kj::Maybe<kj::Own<capnp::ClientHook>> extractCap(uint index) override {
    if (inner == nullptr) return nullptr;
    return inner->extractCap(index).map([this](kj::Own<capnp::ClientHook>&& cap) {
      return capnp::ClientHook::from(
          capnp::reverseMembrane(capnp::Capability::Client(kj::mv(cap)), policy.addRef()));
    });
  }

private:
  capnp::_::CapTableReader* inner = nullptr;
  capnp::MembranePolicy& policy;
};

// Capabilities the plugin puts in its results leave through its membrane; read back, they are
// unwrapped again.
class ResultsCapTable final : public capnp::_::CapTableBuilder {
public:
  explicit ResultsCapTable(capnp::MembranePolicy& policy) : policy(policy) {}

  capnp::AnyPointer::Builder imbue(capnp::AnyPointer::Builder builder) {
    auto internal =
        capnp::_::PointerHelpers<capnp::AnyPointer>::getInternalBuilder(kj::mv(builder));
    inner = internal.getCapTable();
    return capnp::AnyPointer::Builder(internal.imbue(this));
  }

  kj::Maybe<kj::Own<capnp::ClientHook>> extractCap(uint index) override {
    if (inner == nullptr) return nullptr;
    return inner->extractCap(index).map([this](kj::Own<capnp::ClientHook>&& cap) {
      return capnp::ClientHook::from(
          capnp::reverseMembrane(capnp::Capability::Client(kj::mv(cap)), policy.addRef()));
    });
  }
  uint injectCap(kj::Own<capnp::ClientHook>&& cap) override {
    KJ_ASSERT(inner != nullptr);
    return inner->injectCap(capnp::ClientHook::from(
        capnp::membrane(capnp::Capability::Client(kj::mv(cap)), policy.addRef())));
  }
  void dropCap(uint index) override {
    if (inner != nullptr) inner->dropCap(index);
  }

private:
  capnp::_::CapTableBuilder* inner = nullptr;
  capnp::MembranePolicy& policy;
};

}  // namespace

// The plugin's side of one routed call: what its `CallContext` wraps, carrying the call's caller
// (`Context::caller`, through `ShardServices::callerOf`). The parameters are the host's copy of the
// route's (copying reads all of them under the connection's reader limits, and the connection can
// free its buffer at once); results are written straight into the route's call. Capabilities cross
// the instance's membrane (see the cap tables above), and revoking it fails the call (Route).
// Shard-local; refcounted because the plugin's call machinery holds it too.
class HostCallContext final : public capnp::CallContextHook,
                              public RoutedCall,
                              public kj::Refcounted {
public:
  HostCallContext(capnp::CallContext<capnp::AnyPointer, capnp::AnyPointer> outer, Caller* caller,
                  RevocablePolicy& policy, RoutedCalls& calls)
      : outer(outer),
        caller(caller == nullptr ? nullptr : kj::Maybe<kj::Own<Caller>>(kj::addRef(*caller))),
        policy(kj::addRef(policy)),
        calls(calls),
        paramsTable(*this->policy),
        resultsTable(*this->policy) {}

  // Listed means `calls` still exists: ~Instance unlists the calls that outlive it.
  ~HostCallContext() noexcept(false) override {
    if (link.isLinked()) calls.remove(*this);
  }
  KJ_DISALLOW_COPY(HostCallContext);

  // Copies `params` in (throws, failing the call, when they break the reader's limits) and
  // lists the call on its shard.
  void start(capnp::AnyPointer::Reader params) {
    auto size = params.targetSize();
    auto& message = paramsMessage.emplace(static_cast<uint>(size.wordCount + 1));
    message.getRoot<capnp::AnyPointer>().set(params);
    calls.add(*this);
  }

  kj::StringPtr identity() override {
    KJ_IF_MAYBE (c, caller) {
      return (*c)->identity();
    }
    return "host";
  }

  const void* paramsLocation() override {
    KJ_IF_MAYBE (message, paramsMessage) {
      // Found once, when a plugin first asks for a caller while this call is in flight.
      if (location == nullptr) {
        location = structLocation(message->getRoot<capnp::AnyPointer>().asReader());
      }
      return location;
    }
    return nullptr;
  }

  capnp::AnyPointer::Reader getParams() override {
    KJ_IF_MAYBE (reader, params) {
      return *reader;
    }
    auto& message = KJ_REQUIRE_NONNULL(paramsMessage, "the call's parameters were released");
    auto reader = paramsTable.imbue(message.getRoot<capnp::AnyPointer>().asReader());
    params = reader;
    return reader;
  }

  void releaseParams() override {
    params = nullptr;
    paramsMessage = nullptr;
    location = nullptr;
  }

  capnp::AnyPointer::Builder getResults(kj::Maybe<capnp::MessageSize> sizeHint) override {
    KJ_IF_MAYBE (builder, results) {
      return *builder;
    }
    auto builder = resultsTable.imbue(outer.getResults(sizeHint));
    results = builder;
    return builder;
  }

  // A tail call from the plugin: its answer becomes this call's results.
  kj::Promise<void> tailCall(kj::Own<capnp::RequestHook>&& request) override {
    return request->send().then(
        [self = kj::addRef(*this)](capnp::Response<capnp::AnyPointer>&& response) mutable {
          self->outer.getResults(response.targetSize()).set(response);
        });
  }

  // Calls into plugins are cancelled when their caller goes (the route allowed it).
  void allowCancellation() override {}

  // Nothing pipelines on a route's results (Route answers without a pipeline).
  void setPipeline(kj::Own<capnp::PipelineHook>&&) override {}
  kj::Promise<capnp::AnyPointer::Pipeline> onTailCall() override { return kj::NEVER_DONE; }
  capnp::ClientHook::VoidPromiseAndPipeline directTailCall(
      kj::Own<capnp::RequestHook>&& request) override {
    return {tailCall(kj::mv(request)),
            capnp::newBrokenPipeline(KJ_EXCEPTION(UNIMPLEMENTED, "no pipelining on a route"))};
  }

  kj::Own<capnp::CallContextHook> addRef() override { return kj::addRef(*this); }

private:
  // The route's own call, which outlives this one's use of it: the route's promise holds this.
  capnp::CallContext<capnp::AnyPointer, capnp::AnyPointer> outer;
  kj::Maybe<kj::Own<Caller>> caller;
  kj::Own<RevocablePolicy> policy;
  RoutedCalls& calls;
  kj::Maybe<capnp::MallocMessageBuilder> paramsMessage;
  const void* location = nullptr;
  ParamsCapTable paramsTable;
  kj::Maybe<capnp::AnyPointer::Reader> params;
  ResultsCapTable resultsTable;
  kj::Maybe<capnp::AnyPointer::Builder> results;
};

class Route final : public capnp::Capability::Server {
public:
  Route(kj::Own<ShardServices::Entry> entry, kj::Own<Caller> caller)
      : entry(kj::mv(entry)), caller(kj::mv(caller)) {}

  DispatchCallResult dispatchCall(
      uint64_t interfaceId, uint16_t methodId,
      capnp::CallContext<capnp::AnyPointer, capnp::AnyPointer> context) override {
    auto owner = entry->owner;
    if (owner == nullptr || owner->draining) {
      return {KJ_EXCEPTION(DISCONNECTED, "payhostd is draining; retry on another host"), false};
    }
    auto instance = entry->instance;
    auto serviceIndex = entry->serviceIndex;
    capnp::Capability::Client* target = nullptr;
    KJ_IF_MAYBE (capability, entry->capability) {
      target = capability;
    }
    if (entry->canary != nullptr && ++entry->callCounter % 100 < entry->canaryPercent) {
      KJ_IF_MAYBE (capability, entry->canaryCapability) {
        instance = entry->canary;
        serviceIndex = entry->canaryServiceIndex;
        target = capability;
      }
    }
    if (instance == nullptr || target == nullptr) {
      return {KJ_EXCEPTION(DISCONNECTED, "service is not available on this host", entry->name),
              false};
    }
    kj::Own<Caller> callerRef;
    if (caller.get() != nullptr) {
      KJ_IF_MAYBE (refused, caller->callStarting(entry->name, interfaceId, methodId)) {
        return {kj::mv(*refused), false};
      }
      callerRef = kj::addRef(*caller);
    }
    // From here every path ends the call exactly once.
    auto callerDone = kj::defer([callerRef = kj::mv(callerRef)]() mutable {
      if (callerRef.get() != nullptr) callerRef->callEnded();
    });
    auto& method = instance->generation->methodCounters(serviceIndex, methodId);
    method.calls.fetch_add(1, std::memory_order_relaxed);

    // Admission: with no turn free and the queue full, the call fails at once.
    auto& admission = *instance->admission;
    auto maxConcurrent = instance->generation->admissionMaxConcurrent;
    bool mustWait = maxConcurrent > 0 && admission.running >= maxConcurrent;
    if (mustWait && admission.queue.size() >= instance->generation->admissionMaxQueued) {
      admission.dropCancelled(*instance->generation);
    }
    if (mustWait && admission.queue.size() >= instance->generation->admissionMaxQueued) {
      auto& g = *instance->generation;
      g.callsTotal.fetch_add(1, std::memory_order_relaxed);
      g.callsFailed.fetch_add(1, std::memory_order_relaxed);
      g.admissionRejected.fetch_add(1, std::memory_order_relaxed);
      method.overloaded.fetch_add(1, std::memory_order_relaxed);
      owner->counters.total.fetch_add(1, std::memory_order_relaxed);
      owner->counters.failed.fetch_add(1, std::memory_order_relaxed);
      return {
          kj::Exception(kj::Exception::Type::OVERLOADED, __FILE__, __LINE__,
                        kj::str("plugin ", g.name(), ": admission queue full (", admission.running,
                                " running, ", admission.queue.size(), " queued)")),
          false};
    }

    context.allowCancellation();
    // The call carries its caller into the plugin (see HostCallContext).
    auto call =
        kj::refcounted<HostCallContext>(context, caller.get(), *instance->policy, instance->calls);
    call->start(context.getParams());
    context.releaseParams();

    auto generation = instance->generation->addRef();
    generation->callsInFlight.fetch_add(1, std::memory_order_relaxed);
    generation->callsTotal.fetch_add(1, std::memory_order_relaxed);
    owner->callStarted();
    auto started = kj::systemPreciseMonotonicClock().now();
    auto done =
        kj::defer([owner = kj::addRef(*entry), gen = generation.get(), &method, started]() mutable {
          auto elapsed = kj::systemPreciseMonotonicClock().now() - started;
          gen->recordLatency(elapsed);
          method.recordLatency(elapsed / kj::MICROSECONDS);
          gen->callsInFlight.fetch_sub(1, std::memory_order_relaxed);
          if (owner->owner != nullptr) owner->owner->callEnded();
        });
    // Held while the call has a turn: a call cancelled while it waits never had one. A waiting
    // call runs only while its instance (which owns `admission`) lives: ~Instance rejects it.
    auto turn = [&admission, gen = generation.get()]() {
      return kj::defer(
          [admission = kj::addRef(admission), gen]() mutable { admission->release(*gen); });
    };
    // Into the plugin's own capability, with this call's context: the plugin writes its results
    // straight into the route's. The pipeline goes unused (no pipelining on a route's results).
    auto send = [interfaceId, methodId, target = capnp::ClientHook::from(*target),
                 call = kj::addRef(*call)]() mutable {
      return target->call(interfaceId, methodId, kj::mv(call)).promise;
    };

    kj::Promise<void> sent = nullptr;
    if (mustWait) {
      auto paf = kj::newPromiseAndFulfiller<void>();
      admission.queue.push_back(kj::mv(paf.fulfiller));
      generation->admissionQueued.fetch_add(1, std::memory_order_relaxed);
      sent =
          paf.promise.then([send = kj::mv(send), turn]() mutable { return send().attach(turn()); });
    } else if (maxConcurrent > 0) {
      ++admission.running;
      sent = send().attach(turn());
    } else {
      // No limit: nothing to count, and nothing more to allocate per call.
      sent = send();
    }
    // Revoking the instance's membrane fails the call (DISCONNECTED) and cancels the plugin's
    // part of it.
    auto promise = sent.exclusiveJoin(instance->policy->whenRevoked())
                       .catch_(
                           // The counters are host-wide and outlive every shard; `method` lives as
                           // long as the generation, which the call holds.
                           [generation = generation.get(), counters = &owner->counters,
                            &method](kj::Exception&& e) {
                             generation->callsFailed.fetch_add(1, std::memory_order_relaxed);
                             counters->failed.fetch_add(1, std::memory_order_relaxed);
                             countFailure(method, e.getType());
                             kj::throwFatalException(copyIntoHost(kj::mv(e)));
                           })
                       .attach(kj::mv(done), kj::mv(generation), kj::mv(call), kj::mv(callerDone));
    return {kj::mv(promise), false};
  }

private:
  kj::Own<ShardServices::Entry> entry;
  // Null: host code (trusted).
  kj::Own<Caller> caller;
};

ShardServices::ShardServices(uint32_t shardIndex, uint32_t shardCount, LogSink& log,
                             kj::Timer& timer, HostShared& counters)
    : shardIndex(shardIndex), shardCount(shardCount), log(log), timer(timer), counters(counters) {}

ShardServices::~ShardServices() noexcept(false) {
  clear();
  for (auto& [name, entry] : entries)
    entry->owner = nullptr;
}

kj::Promise<void> ShardServices::install(kj::Own<Generation> generation) {
  auto& loaded = *generation;
  return prepare(kj::mv(generation)).then([this, &loaded]() { activate(loaded); });
}

kj::Promise<void> ShardServices::prepare(kj::Own<Generation> generation) {
  auto& descriptor = generation->descriptor();
  auto instance = kj::heap<Instance>();
  instance->context = kj::heap<HostContext>(*generation, *this, log, timer, shardIndex, shardCount);
  instance->generation = kj::mv(generation);
  char message[1024] = {0};
  payhost_error_v1 error{message, sizeof(message)};
  void* created = descriptor.create(static_cast<Context*>(instance->context.get()), &error);
  if (created == nullptr) {
    PAYHOST_FAIL(FAILED, instance->generation->library().path(), ": plugin ",
                 instance->generation->name(), " ", instance->generation->version(),
                 " failed in its constructor: ", message);
  }
  instance->plugin = static_cast<Plugin*>(created);
  for (auto& service : instance->generation->services()) {
    // Unwrapped: each call crosses the membrane through its HostCallContext (see Route).
    instance->capabilities.emplace(std::string(service.name.cStr()),
                                   instance->plugin->service(service.name));
  }
  auto id = instance->generation->id();
  auto ready = instance->plugin->ready();
  // Kept in `instances` while it gets ready, so that `uninstall` can drop it on a refused deploy.
  instances.emplace(id, kj::mv(instance));
  return ready.catch_([this, id](kj::Exception&& e) -> kj::Promise<void> {
    auto it = instances.find(id);
    if (it != instances.end()) instances.erase(it);
    return copyIntoHost(kj::mv(e));
  });
}

ShardServices::Instance& ShardServices::instanceOf(const Generation& generation) {
  auto it = instances.find(generation.id());
  KJ_REQUIRE(it != instances.end(), "generation has no instance on this shard", generation.name(),
             generation.id());
  return *it->second;
}

void ShardServices::activate(const Generation& generation) {
  auto& instance = instanceOf(generation);
  for (auto& service : generation.services()) {
    auto& slot = entries[std::string(service.name.cStr())];
    if (slot.get() == nullptr) slot = kj::refcounted<Entry>(service.name);
    slot->owner = this;
    slot->route(&instance, service.name);
    if (slot->canary == &instance) {
      slot->canary = nullptr;
      slot->canaryCapability = nullptr;
      slot->canaryPercent = 0;
    }
  }
}

void ShardServices::setCanary(const Generation& generation, uint32_t percent) {
  auto& instance = instanceOf(generation);
  for (auto& service : generation.services()) {
    auto& slot = entries[std::string(service.name.cStr())];
    if (slot.get() == nullptr) slot = kj::refcounted<Entry>(service.name);
    slot->owner = this;
    if (slot->instance == nullptr) {
      // Nothing to compare against: the canary is simply the service.
      slot->route(&instance, service.name);
      continue;
    }
    slot->canary = &instance;
    slot->canaryServiceIndex = static_cast<size_t>(&service - generation.services().begin());
    slot->canaryCapability = instance.capabilities.at(std::string(service.name.cStr()));
    slot->canaryPercent = percent;
  }
}

void ShardServices::clearCanary(const Generation& generation) {
  auto it = instances.find(generation.id());
  if (it == instances.end()) return;
  for (auto& [name, entry] : entries) {
    if (entry->canary == it->second.get()) {
      entry->canary = nullptr;
      entry->canaryCapability = nullptr;
      entry->canaryPercent = 0;
    }
  }
}

kj::Maybe<kj::Array<capnp::word>> ShardServices::exportState(const Generation& generation) {
  auto it = instances.find(generation.id());
  if (it == instances.end()) return nullptr;
  KJ_IF_MAYBE (state, it->second->plugin->exportState()) {
    // The array's disposer may live in the plugin's library: copy into host memory at once.
    auto copy = kj::heapArray<capnp::word>(state->size());
    memcpy(copy.begin(), state->begin(), state->size() * sizeof(capnp::word));
    return kj::mv(copy);
  }
  return nullptr;
}

void ShardServices::importState(const Generation& generation,
                                kj::ArrayPtr<const capnp::word> state) {
  auto& instance = instanceOf(generation);
  capnp::ReaderOptions options;
  options.traversalLimitInWords = state.size() * 2 + 1024;
  capnp::FlatArrayMessageReader reader(state, options);
  instance.plugin->importState(reader.getRoot<capnp::AnyPointer>());
}

void reclaimLeases(const Generation& generation, HostShared& shared, LogSink& log) {
  auto id = generation.id();
  auto account = [&](kj::StringPtr pool, uint32_t reclaimed, uint32_t held) {
    if (reclaimed == 0 && held == 0) return;
    {
      auto leaked = shared.leaked.lockExclusive();
      std::string plugin(generation.name().cStr());
      if (reclaimed > 0) (*leaked)[{plugin, pool.cStr(), "reclaimed"}] += reclaimed;
      if (held > 0) (*leaked)[{plugin, pool.cStr(), "held"}] += held;
    }
    auto generationText = kj::str(id);
    auto count = kj::str(reclaimed + held);
    auto reclaimedText = kj::str(reclaimed);
    auto heldText = kj::str(held);
    LogField fields[] = {{"plugin", generation.name()},
                         {"version", generation.version()},
                         {"generation", generationText},
                         {"pool", pool},
                         {"count", count},
                         {"reclaimed", reclaimedText},
                         {"held", heldText}};
    log.write(LogLevel::WARNING, "lease.leaked", nullptr, fields);
  };
  if (shared.workers != nullptr) {
    auto workers = shared.workers->reclaim(id);
    account("workers", workers.waiting + workers.queued, workers.running);
  }
  for (auto& pool : shared.databases) {
    // After the worker pool: transactions dropped there gave their connections back.
    auto database = pool->reclaim(id);
    account(pool->name(), database.waiting, database.held);
  }
}

void ShardServices::uninstall(const Generation& generation) {
  auto it = instances.find(generation.id());
  if (it == instances.end()) return;
  KJ_DEFER({
    bool last = false;
    {
      auto counts = counters.uninstalledOn.lockExclusive();
      last = ++(*counts)[generation.id()] == shardCount;
      if (last) counts->erase(generation.id());
    }
    // The last shard to remove the version takes back what it still holds, once.
    if (last) reclaimLeases(generation, counters, log);
  });
  for (auto& [name, entry] : entries) {
    if (entry->instance == it->second.get()) entry->route(nullptr, name);
    if (entry->canary == it->second.get()) {
      entry->canary = nullptr;
      entry->canaryCapability = nullptr;
      entry->canaryPercent = 0;
    }
  }
  instances.erase(it);
}

capnp::Capability::Client ShardServices::route(kj::StringPtr name, kj::Own<Caller> caller) {
  auto& slot = entries[std::string(name.cStr())];
  if (slot.get() == nullptr) {
    slot = kj::refcounted<Entry>(name);
    slot->owner = this;
  }
  return kj::heap<Route>(kj::addRef(*slot), kj::mv(caller));
}

kj::StringPtr ShardServices::callerOf(const void* paramsLocation) const {
  if (paramsLocation == nullptr) return "";
  // Each live call holds its own copy of its parameters, so at most one matches.
  for (auto& [id, instance] : instances) {
    for (auto& call : instance->calls) {
      if (call.paramsLocation() == paramsLocation) return call.identity();
    }
  }
  return "";
}

bool ShardServices::serves(kj::StringPtr name) const {
  auto it = entries.find(std::string(name.cStr()));
  return it != entries.end() && it->second->instance != nullptr;
}

kj::Array<ShardServices::ServiceView> ShardServices::list() const {
  kj::Vector<ServiceView> views;
  for (auto& [name, entry] : entries) {
    if (entry->instance == nullptr) continue;
    views.add(ServiceView{entry->name, *entry->declaration, *entry->instance->generation});
  }
  return views.releaseAsArray();
}

void ShardServices::startDraining() {
  draining = true;
}

kj::Promise<void> ShardServices::whenIdle() {
  if (inFlight_ == 0) return kj::READY_NOW;
  auto paf = kj::newPromiseAndFulfiller<void>();
  idleFulfiller = kj::mv(paf.fulfiller);
  return kj::mv(paf.promise);
}

void ShardServices::clear() {
  for (auto& [name, entry] : entries) {
    entry->route(nullptr, name);
    entry->canary = nullptr;
    entry->canaryCapability = nullptr;
  }
  instances.clear();
}

void ShardServices::callStarted() {
  ++inFlight_;
  counters.inFlight.fetch_add(1, std::memory_order_relaxed);
  counters.total.fetch_add(1, std::memory_order_relaxed);
}

void ShardServices::callEnded() {
  --inFlight_;
  counters.inFlight.fetch_sub(1, std::memory_order_relaxed);
  if (inFlight_ == 0) {
    KJ_IF_MAYBE (fulfiller, idleFulfiller) {
      (*fulfiller)->fulfill();
      idleFulfiller = nullptr;
    }
  }
}

}  // namespace payhost::host
