# cmake -DCHECK=<check-dependency-rule.sh> -DWORK_DIR=<scratch dir> -P <this file>
#
# Proves that check-dependency-rule.sh can fail: builds a small tree with one violation of each
# kind (and lines that look close but are allowed), runs the check on it, and passes only when the
# check fails naming every violation and none of the allowed lines.
foreach(var CHECK WORK_DIR)
  if(NOT ${var})
    message(FATAL_ERROR "${var} is required")
  endif()
endforeach()

set(tree ${WORK_DIR}/dependency-rule-tree)
file(REMOVE_RECURSE ${tree})

set(bad_lines
  "sdk/src/bad.cpp:2:#include \"host/loader/plugin-library.h\""
  "plugins/card/card.cpp:1:#  include <host/rpc/shard.h>"
  "examples/client/client.cpp:3:#include \"../../host/log/logger.h\""
  "sdk/include/payhost/bad.h:1:#include <boost/asio.hpp>"
  "sdk/include/payhost/bad.h:2:#include <openssl/evp.h>"
  "sdk/include/payhost/bad.h:3:void useTls(SSL_CTX* context)"
  "sdk/include/payhost/bad.h:4:payhost::host::Generation& generation()"
  "sdk/include/payhost/bad.h:5:boost::asio::io_context& ioContext()"
  "sdk/include/payhost/bad.h:6:namespace payhost::host {")
set(good_lines
  "sdk/src/fine.cpp:1:#include <payhost/host.capnp.h>"
  "sdk/src/fine.cpp:2:#include \"payhost/abi.h\""
  "sdk/include/payhost/good.h:1:// The host keeps OpenSSL, SSL_CTX and boost::asio out of this header."
  "sdk/include/payhost/good.h:2:payhost::Context& context()"
  "sdk/include/payhost/good.h:3:int ghost::count()"
  "host/loader/inside.cpp:1:#include \"host/loader/plugin-library.h\"")

# Write each line at its line number, padding with blank lines. (No ';' in these lines: CMake
# lists would split them.)
foreach(entry IN LISTS bad_lines good_lines)
  string(REGEX MATCH "^([^:]+):([0-9]+):(.*)$" _ "${entry}")
  set(file ${CMAKE_MATCH_1})
  set(line ${CMAKE_MATCH_2})
  set(text "${CMAKE_MATCH_3}")
  string(MAKE_C_IDENTIFIER "${file}" key)
  if(NOT DEFINED written_${key})
    set(written_${key} 0)
    list(APPEND files ${file})
  endif()
  while(written_${key} LESS line)
    math(EXPR next "${written_${key}} + 1")
    if(next EQUAL line)
      set(content_${key} "${content_${key}}${text}\n")
    else()
      set(content_${key} "${content_${key}}\n")
    endif()
    set(written_${key} ${next})
  endwhile()
endforeach()
foreach(file IN LISTS files)
  string(MAKE_C_IDENTIFIER "${file}" key)
  file(WRITE ${tree}/${file} "${content_${key}}")
endforeach()

execute_process(COMMAND sh ${CHECK} ${tree} OUTPUT_VARIABLE output ERROR_VARIABLE output
                RESULT_VARIABLE rc)
message("${output}")
if(rc EQUAL 0)
  message(FATAL_ERROR "the check passed a tree that breaks the dependency rule")
endif()
foreach(entry IN LISTS bad_lines)
  string(REGEX MATCH "^([^:]+:[0-9]+):" _ "${entry}")
  string(FIND "${output}" "${CMAKE_MATCH_1}: " at)
  if(at EQUAL -1)
    message(FATAL_ERROR "the check did not report ${entry}")
  endif()
endforeach()
foreach(entry IN LISTS good_lines)
  string(REGEX MATCH "^([^:]+:[0-9]+):" _ "${entry}")
  string(FIND "${output}" "${CMAKE_MATCH_1}: " at)
  if(NOT at EQUAL -1)
    message(FATAL_ERROR "the check reported an allowed line: ${entry}")
  endif()
endforeach()
file(REMOVE_RECURSE ${tree})
