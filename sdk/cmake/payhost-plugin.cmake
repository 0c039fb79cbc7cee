# payhost_add_plugin(NAME <name> SOURCES <file>... [LINK_LIBRARIES <lib>...])
#
# Builds a payhost plugin: a MODULE library <name>.so linked against payhost::sdk, built so that
# the host can unload it:
#   -fvisibility=hidden -fvisibility-inlines-hidden  nothing but the entry symbol is exported, so
#                                                    plugins cannot clash with each other
#   -fno-gnu-unique (GCC)                            no STB_GNU_UNIQUE symbols, which would make
#                                                    glibc keep the library mapped forever
# and checks the result after linking: a library that still exports a unique symbol fails the
# build with the symbols listed.
set(_PAYHOST_CHECK_UNLOADABLE ${CMAKE_CURRENT_LIST_DIR}/payhost-check-unloadable.cmake)

function(payhost_add_plugin)
  cmake_parse_arguments(PARSE_ARGV 0 ARG "" "NAME" "SOURCES;LINK_LIBRARIES")
  if(NOT ARG_NAME)
    message(FATAL_ERROR "payhost_add_plugin: NAME is required")
  endif()
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "payhost_add_plugin(${ARG_NAME}): SOURCES is required")
  endif()
  add_library(${ARG_NAME} MODULE ${ARG_SOURCES})
  target_link_libraries(${ARG_NAME} PRIVATE payhost::sdk ${ARG_LINK_LIBRARIES})
  set_target_properties(${ARG_NAME} PROPERTIES
    PREFIX ""
    CXX_VISIBILITY_PRESET hidden
    C_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  target_compile_options(${ARG_NAME} PRIVATE $<$<CXX_COMPILER_ID:GNU>:-fno-gnu-unique>)
  add_custom_command(TARGET ${ARG_NAME} POST_BUILD
    COMMAND ${CMAKE_COMMAND} -DPLUGIN=$<TARGET_FILE:${ARG_NAME}>
            -P ${_PAYHOST_CHECK_UNLOADABLE}
    COMMENT "Checking that ${ARG_NAME} can be unloaded"
    VERBATIM)
endfunction()
