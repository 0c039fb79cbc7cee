# Smoke test of `payhost-flow-bench` against SQLite directly (tests/bench/CMakeLists.txt): one
# short round of each case with the default FX share, then fails unless the run succeeded (every
# purchase captured; payhostd's ledgers and the naive files balanced in both currencies, every
# account holding what the purchases put there) and the JSON holds the figures and the FX share,
# with FX purchases made on every side. No speed is asserted.
#
#   cmake -DBENCH=... -DPAYHOSTD=... -DPLUGINS=... -DDIR=... -P flow-smoke.cmake
set(_json ${DIR}.json)
file(REMOVE ${_json})
execute_process(
  COMMAND ${BENCH} --payhostd ${PAYHOSTD} --plugins ${PLUGINS} --rounds 1 --seconds 0.3
          --in-flight 8 --dir ${DIR} --json ${_json}
  RESULT_VARIABLE _status)
if(NOT _status EQUAL 0)
  message(FATAL_ERROR "payhost-flow-bench failed (exit ${_status})")
endif()
file(READ ${_json} _text)
foreach(_case flow naive naive-3)
  foreach(_field payments_per_s p50_us p99_us)
    string(JSON _value ERROR_VARIABLE _error GET "${_text}" cases ${_case} ${_field})
    if(_error)
      message(FATAL_ERROR "JSON lacks cases.${_case}.${_field}: ${_error}")
    endif()
    if(NOT _value GREATER 0)
      message(FATAL_ERROR "cases.${_case}.${_field} is ${_value}: no purchase completed?")
    endif()
  endforeach()
endforeach()
string(JSON _share GET "${_text}" fx_share)
if(NOT _share EQUAL 20)
  message(FATAL_ERROR "fx_share is ${_share}, the default is 20")
endif()
# Every fifth purchase is an FX one, on every side: exactly a fifth of the first N, rounded down
# (the naive cases make tens to hundreds of payments in 0.3 s, the flow hundreds).
foreach(_side flow naive naive-3)
  string(JSON _all GET "${_text}" purchases ${_side})
  string(JSON _fx GET "${_text}" purchases ${_side}_fx)
  math(EXPR _expected "(${_all} * ${_share}) / 100")
  if(NOT _fx EQUAL _expected)
    message(FATAL_ERROR "${_side}: ${_fx} FX purchases of ${_all}, expected ${_expected}")
  endif()
endforeach()
string(JSON _flowFx GET "${_text}" purchases flow_fx)
if(NOT _flowFx GREATER 0)
  message(FATAL_ERROR "the flow made no FX purchase")
endif()
string(JSON _ratio GET "${_text}" ratio_flow_over_naive)
if(NOT _ratio GREATER 0)
  message(FATAL_ERROR "ratio_flow_over_naive is ${_ratio}")
endif()
foreach(_flag ledger_balanced naive_ledgers_balanced)
  string(JSON _value GET "${_text}" ${_flag})
  if(NOT _value STREQUAL "ON" AND NOT _value STREQUAL "true")
    message(FATAL_ERROR "${_flag} is ${_value}")
  endif()
endforeach()
file(REMOVE ${_json})
message(STATUS "payhost-flow-bench: every side made FX purchases and balanced; JSON complete")
