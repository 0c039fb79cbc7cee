// Server processes for the benchmarks: start one with its output in a log file, wait until it
// serves, find payhostd's TCP port through its Admin interface, and read a process's CPU time.
//
// Single-threaded: call from the benchmark's event-loop thread.

#pragma once

#include <kj/async-io.h>
#include <kj/function.h>
#include <kj/string.h>

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace payhost::bench {

// Starts `args` (args[0] is the executable's path) with stdout and stderr to `logPath`.
pid_t startProcess(std::vector<std::string> args, kj::StringPtr logPath);

// Waits up to 10 s for `ready()` to return a port, checking every 20 ms; throws, naming the
// server, when it exits or does not get ready in time.
uint16_t waitForPort(kj::AsyncIoContext& io, pid_t pid, kj::StringPtr name,
                     kj::Function<kj::Maybe<uint16_t>()> ready);

// The port a baseline server printed as its first line ("listening PORT") into `logPath`; null
// before it did.
kj::Maybe<uint16_t> portFromLog(kj::StringPtr logPath);

// The port of payhostd's `index`-th TCP listener (in config order), from its admin interface once
// it is serving; null before.
kj::Maybe<uint16_t> payhostdPort(kj::AsyncIoContext& io, kj::StringPtr adminSocket,
                                 size_t index = 0);

// CPU time (user + system, all threads) used so far by `pid`, in microseconds.
double processCpuMicros(pid_t pid);

}  // namespace payhost::bench
