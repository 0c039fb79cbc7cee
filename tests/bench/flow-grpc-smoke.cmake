# Smoke test of `payhost-flow-bench --versus grpc` (tests/bench/CMakeLists.txt): runs one short
# round of each case, then fails unless the run succeeded (every purchase captured, every ledger
# balanced, every server stopped cleanly) and the JSON holds each figure the README and the plot
# read, with purchases completed on both sides. No speed is asserted.
#
#   cmake -DBENCH=... -DPAYHOSTD=... -DPLUGINS=... -DGRPC_FLOW=... -DGRPC_CARD=... -DDIR=...
#         -P flow-grpc-smoke.cmake
set(_json ${DIR}.json)
file(REMOVE ${_json})
execute_process(
  COMMAND ${BENCH} --payhostd ${PAYHOSTD} --plugins ${PLUGINS} --versus grpc --grpc-flow
          ${GRPC_FLOW} --grpc-card ${GRPC_CARD} --rounds 1 --seconds 1 --in-flight 8 --dir
          ${DIR} --json ${_json}
  RESULT_VARIABLE _status)
if(NOT _status EQUAL 0)
  message(FATAL_ERROR "payhost-flow-bench --versus grpc failed (exit ${_status})")
endif()
file(READ ${_json} _text)
foreach(_case payhost grpc grpc-batch)
  foreach(_field payments_per_s p50_us p99_us server_cpu_us_per_payment payments_per_server_cpu_s)
    string(JSON _value ERROR_VARIABLE _error GET "${_text}" cases ${_case} ${_field})
    if(_error)
      message(FATAL_ERROR "JSON lacks cases.${_case}.${_field}: ${_error}")
    endif()
    if(NOT _value GREATER 0)
      message(FATAL_ERROR "cases.${_case}.${_field} is ${_value}: no purchase completed?")
    endif()
  endforeach()
  string(JSON _failed GET "${_text}" cases ${_case} failed)
  if(NOT _failed EQUAL 0)
    message(FATAL_ERROR "cases.${_case}: ${_failed} purchases failed")
  endif()
endforeach()
foreach(_pair payhost/grpc payhost/grpc-batch)
  foreach(_field payments_per_server_cpu_s payments_per_s p50)
    string(JSON _value ERROR_VARIABLE _error GET "${_text}" ratios ${_pair} ${_field})
    if(_error OR NOT _value GREATER 0)
      message(FATAL_ERROR "JSON lacks ratios.${_pair}.${_field} (${_value} ${_error})")
    endif()
  endforeach()
endforeach()
string(JSON _balanced GET "${_text}" ledger_balanced)
if(NOT _balanced STREQUAL "ON" AND NOT _balanced STREQUAL "true")
  message(FATAL_ERROR "ledger_balanced is ${_balanced}")
endif()
file(REMOVE ${_json})
message(STATUS "payhost-flow-bench --versus grpc: both sides completed purchases; JSON complete")
