// Writing a plugin: the `Plugin` interface, `serve()` and the `PAYHOST_PLUGIN` macro.
//
//   class CardPlugin final : public payhost::Plugin {
//   public:
//     explicit CardPlugin(payhost::Context& context);
//     capnp::Capability::Client service(kj::StringPtr name) override {
//       return payhost::serve<CardServer>(context);  // a payhost::schema::CardProcessor::Server
//     }
//   };
//   PAYHOST_PLUGIN(CardPlugin, "card-processor", "1.0.0",
//                  PAYHOST_SERVICE("payments.card", payhost::schema::CardProcessor));
//
// The host creates one instance per shard, on that shard's thread, with that shard's `Context`,
// then asks it once for each declared service. The instance lives until the plugin's version is
// unloaded; the services it returned may be released before or after it.
//
// Unloading: the host closes a plugin's library only when every object the library made is
// gone. `serve()` counts the servers it makes and their calls in progress, and lets each call be
// cancelled when its caller goes away; return servers made by `serve()` (not `kj::heap`) so the
// host can tell when the library is safe to close.

#ifndef PAYHOST_PLUGIN_H_
#define PAYHOST_PLUGIN_H_

#include <payhost/abi.h>
#include <payhost/context.h>
#include <payhost/fingerprint.h>

#include <capnp/capability.h>
#include <capnp/message.h>
#include <kj/async.h>
#include <kj/debug.h>
#include <kj/exception.h>
#include <kj/memory.h>

#include <atomic>
#include <cstring>

namespace payhost {

// One instance of a plugin on one shard. Shard-local.
class Plugin {
public:
  virtual ~Plugin() noexcept(false) = default;

  // Returns the capability for `name`, one of the services declared in `PAYHOST_PLUGIN`.
  virtual capnp::Capability::Client service(kj::StringPtr name) = 0;

  // Resolves when the instance is ready to serve; a rejection refuses the plugin (or the deploy
  // of this version). The default is ready at once.
  virtual kj::Promise<void> ready();

  // State handoff on a hot swap (optional). Just before the route switches to a new version, the
  // host asks the running version's instance on each shard for its state and gives it to the new
  // version's instance on the same shard, in the same event-loop turn, so no call falls between
  // them. The state is a Cap'n Proto message of the plugin's own schema (`encodeState`); evolve
  // that schema by addition only, so each version can read its predecessor's. Null (the default)
  // hands over nothing and the new version starts fresh. A throw from `importState` refuses the
  // deploy and leaves the running version serving.
  virtual kj::Maybe<kj::Array<capnp::word>> exportState();
  virtual void importState(capnp::AnyPointer::Reader state);
};

// Serializes a state message for `Plugin::exportState`.
kj::Array<capnp::word> encodeState(capnp::MessageBuilder& message);

namespace _ {  // private

// Objects alive in this library. `inline` with hidden visibility gives every plugin library its
// own counter.
inline std::atomic<uint64_t> liveObjects{0};

class LiveToken {
public:
  LiveToken() { liveObjects.fetch_add(1, std::memory_order_relaxed); }
  ~LiveToken() { liveObjects.fetch_sub(1, std::memory_order_release); }
  LiveToken(LiveToken&&) = delete;
  KJ_DISALLOW_COPY(LiveToken);
};

// A server made by `serve()`: counted while alive, each call counted until it completes, and
// each call cancellable (without `allowCancellation()`, Cap'n Proto 0.9.2 keeps running a local
// call's continuation after its caller has gone, which could outlive the library). Wraps the
// author's server rather than deriving from it, so that server may be `final`.
class Served final : public capnp::Capability::Server {
public:
  explicit Served(kj::Own<capnp::Capability::Server> inner) : inner(kj::mv(inner)) {}

  DispatchCallResult dispatchCall(
      uint64_t interfaceId, uint16_t methodId,
      capnp::CallContext<capnp::AnyPointer, capnp::AnyPointer> context) override {
    context.allowCancellation();
    auto result = inner->dispatchCall(interfaceId, methodId, context);
    liveObjects.fetch_add(1, std::memory_order_relaxed);
    return {result.promise.attach(
                kj::defer([] { liveObjects.fetch_sub(1, std::memory_order_release); })),
            result.isStreaming};
  }

private:
  LiveToken token;
  kj::Own<capnp::Capability::Server> inner;
};

inline void writeError(payhost_error_v1* error, const char* message) noexcept {
  if (error == nullptr || error->message == nullptr || error->capacity == 0) return;
  size_t n = std::strlen(message);
  if (n >= error->capacity) n = error->capacity - 1;
  std::memcpy(error->message, message, n);
  error->message[n] = '\0';
}

// The C door hands ownership across as a raw pointer, released by `destroyInstance`; nothing
// escapes as an exception, since the caller is C.
template <typename PluginType>
void* createInstance(void* context, payhost_error_v1* error) noexcept {
  try {
    Plugin* instance = new PluginType(*static_cast<Context*>(context));
    liveObjects.fetch_add(1, std::memory_order_relaxed);
    return instance;
  } catch (const kj::Exception& e) {
    writeError(error, e.getDescription().cStr());
  } catch (const std::exception& e) {
    writeError(error, e.what());
  } catch (...) {
    writeError(error, "the plugin's constructor threw a non-standard exception");
  }
  return nullptr;
}

inline void destroyInstance(void* instance) noexcept {
  delete static_cast<Plugin*>(instance);
  liveObjects.fetch_sub(1, std::memory_order_release);
}

inline uint64_t countLiveObjects() noexcept {
  return liveObjects.load(std::memory_order_acquire);
}

}  // namespace _

// Makes a counted, cancellable server for a capability:
// `return payhost::serve<CardServer>(context, config);`.
template <typename Server, typename... Params>
typename Server::Serves::Client serve(Params&&... params) {
  return capnp::Capability::Client(
             kj::heap<_::Served>(kj::heap<Server>(kj::fwd<Params>(params)...)))
      .castAs<typename Server::Serves>();
}

}  // namespace payhost

// Declared by the SDK, defined by `PAYHOST_PLUGIN`: the descriptor of the plugin compiled into
// this library or executable. Lets an in-process test host use a plugin without `dlopen`.
const payhost_plugin_v1_descriptor* payhostPluginDescriptor();

// One entry in `PAYHOST_PLUGIN`'s service list: a name and the Cap'n Proto interface it serves.
#define PAYHOST_SERVICE(serviceName, Interface)           \
  ::payhost_service_v1 {                                  \
    serviceName, #Interface, ::capnp::typeId<Interface>() \
  }

// Declares this library's plugin: its class (constructible from `payhost::Context&`), name,
// semantic version and services (one or more `PAYHOST_SERVICE(...)`). Use once per library, at
// namespace scope in one source file. Exports the versioned entry symbol and nothing else.
#define PAYHOST_PLUGIN(PluginType, pluginName, pluginVersion, ...)            \
  namespace payhost_plugin_ {                                                 \
  constexpr ::payhost_service_v1 SERVICES[] = {__VA_ARGS__};                  \
  constexpr ::payhost_plugin_v1_descriptor DESCRIPTOR = {                     \
      sizeof(::payhost_plugin_v1_descriptor),                                 \
      PAYHOST_ABI_MAJOR,                                                      \
      PAYHOST_ABI_MINOR,                                                      \
      PAYHOST_BUILD_FINGERPRINT,                                              \
      pluginName,                                                             \
      pluginVersion,                                                          \
      SERVICES,                                                               \
      sizeof(SERVICES) / sizeof(SERVICES[0]),                                 \
      &::payhost::_::createInstance<PluginType>,                              \
      &::payhost::_::destroyInstance,                                         \
      &::payhost::_::countLiveObjects,                                        \
  };                                                                          \
  }                                                                           \
  const payhost_plugin_v1_descriptor* payhostPluginDescriptor() {             \
    return &payhost_plugin_::DESCRIPTOR;                                      \
  }                                                                           \
  extern "C" const payhost_plugin_v1_descriptor* payhost_plugin_v1_entry_() { \
    return payhostPluginDescriptor();                                         \
  }                                                                           \
  PAYHOST_EXPORT_ENTRY_(payhost_plugin_v1_entry_)

// Boost.DLL appears here only: the exported alias the host looks up by name. Boost.DLL's default
// Boost.Filesystem would put STB_GNU_UNIQUE symbols into the plugin and keep it from unloading.
#ifndef BOOST_DLL_USE_STD_FS
#define BOOST_DLL_USE_STD_FS
#endif
#include <boost/dll/alias.hpp>
#define PAYHOST_EXPORT_ENTRY_(function) BOOST_DLL_ALIAS(function, payhost_plugin_v1)

#endif  // PAYHOST_PLUGIN_H_
