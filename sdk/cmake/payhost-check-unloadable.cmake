# cmake -DPLUGIN=<file.so> -P payhost-check-unloadable.cmake
#
# Fails when the library defines STB_GNU_UNIQUE symbols. glibc never unloads such a library:
# dlclose() returns 0 but the code stays mapped, and a later load of a new version gets the old
# code. GCC emits them for static locals of inline functions and static members of templates
# with default visibility; build with -fvisibility=hidden and -fno-gnu-unique (as
# payhost_add_plugin does) and avoid Boost.Filesystem (define BOOST_DLL_USE_STD_FS).
if(NOT PLUGIN)
  message(FATAL_ERROR "usage: cmake -DPLUGIN=<file.so> -P payhost-check-unloadable.cmake")
endif()
find_program(READELF readelf REQUIRED)
execute_process(COMMAND ${READELF} --dyn-syms --wide ${PLUGIN}
                OUTPUT_VARIABLE symbols RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "payhost: cannot read the symbols of ${PLUGIN} (readelf exit ${rc})")
endif()
string(REGEX MATCHALL "[^\n]* UNIQUE [^\n]*" unique "${symbols}")
if(unique)
  list(LENGTH unique count)
  set(names "")
  foreach(line IN LISTS unique)
    string(REGEX REPLACE ".* " "" name "${line}")
    string(APPEND names "\n  ${name}")
  endforeach()
  message(FATAL_ERROR
    "payhost: ${PLUGIN} exports ${count} STB_GNU_UNIQUE symbol(s), so it could never be "
    "unloaded (glibc keeps such libraries mapped after dlclose):${names}\n"
    "Build it with payhost_add_plugin() (-fvisibility=hidden, -fno-gnu-unique), or give these "
    "symbols hidden visibility.")
endif()
