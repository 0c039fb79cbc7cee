#include "bench/server-process.h"

#include <payhost/host.capnp.h>

#include <capnp/rpc-twoparty.h>
#include <kj/debug.h>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

namespace payhost::bench {

pid_t startProcess(std::vector<std::string> args, kj::StringPtr logPath) {
  pid_t pid = fork();
  KJ_ASSERT(pid >= 0);
  if (pid == 0) {
    int log = open(logPath.cStr(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(log, 1);
    dup2(log, 2);
    std::vector<char*> argv;
    for (auto& arg : args)
      argv.push_back(arg.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

uint16_t waitForPort(kj::AsyncIoContext& io, pid_t pid, kj::StringPtr name,
                     kj::Function<kj::Maybe<uint16_t>()> ready) {
  for (int i = 0; i < 500; ++i) {
    KJ_IF_MAYBE (port, ready()) {
      return *port;
    }
    int status;
    KJ_REQUIRE(waitpid(pid, &status, WNOHANG) == 0, "server exited while starting", name);
    io.provider->getTimer().afterDelay(20 * kj::MILLISECONDS).wait(io.waitScope);
  }
  KJ_FAIL_REQUIRE("server did not start within 10 s", name);
}

kj::Maybe<uint16_t> portFromLog(kj::StringPtr logPath) {
  std::ifstream in(logPath.cStr());
  std::string word;
  int port = 0;
  if (in >> word >> port && word == "listening" && port > 0) return static_cast<uint16_t>(port);
  return nullptr;
}

kj::Maybe<uint16_t> payhostdPort(kj::AsyncIoContext& io, kj::StringPtr adminSocket, size_t index) {
  try {
    auto address =
        io.provider->getNetwork().parseAddress(kj::str("unix:", adminSocket)).wait(io.waitScope);
    auto connection = address->connect().wait(io.waitScope);
    capnp::TwoPartyClient client(*connection);
    auto response =
        client.bootstrap().castAs<schema::Admin>().statusRequest().send().wait(io.waitScope);
    auto status = response.getStatus();
    if (status.getState() != schema::HostState::SERVING) return nullptr;
    for (auto listener : status.getListeners()) {
      KJ_IF_MAYBE (colon, listener.findLast(':')) {
        if (!listener.startsWith("unix:") && index-- == 0) {
          return atoi(listener.cStr() + *colon + 1);
        }
      }
    }
  } catch (const kj::Exception&) {
    // Not listening yet.
  }
  return nullptr;
}

double processCpuMicros(pid_t pid) {
  std::ifstream file(kj::str("/proc/", pid, "/stat").cStr());
  std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  // Fields after the command name, which is in parentheses and may contain spaces.
  std::istringstream rest(text.substr(text.rfind(')') + 2));
  std::string field;
  double utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::stod(field);
    if (i == 15) stime = std::stod(field);
  }
  return (utime + stime) * 1e6 / sysconf(_SC_CLK_TCK);
}

}  // namespace payhost::bench
