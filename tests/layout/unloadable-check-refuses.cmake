# cmake -DCHECK=<payhost-check-unloadable.cmake> -DPLUGIN=<file.so> -DSYMBOL=<name> -P <this file>
#
# Runs the unloadability check on a library that exports an STB_GNU_UNIQUE symbol, and passes
# only when the check fails for that reason: a non-zero exit and a message naming the symbol.
# (WILL_FAIL alone would also pass when the check failed for any other reason.)
foreach(var CHECK PLUGIN SYMBOL)
  if(NOT ${var})
    message(FATAL_ERROR "${var} is required")
  endif()
endforeach()

execute_process(COMMAND ${CMAKE_COMMAND} -DPLUGIN=${PLUGIN} -P ${CHECK}
                OUTPUT_VARIABLE output ERROR_VARIABLE output RESULT_VARIABLE rc)
message("${output}")
if(rc EQUAL 0)
  message(FATAL_ERROR "the check accepted ${PLUGIN}, which exports ${SYMBOL}")
endif()
foreach(expected "STB_GNU_UNIQUE" "${SYMBOL}")
  string(FIND "${output}" "${expected}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "the check failed without naming '${expected}'")
  endif()
endforeach()
