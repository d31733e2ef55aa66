# Per-target include roots: the layer rules of DESIGN.md as include paths.
#
# Code includes project headers by their path from the repository root
# ("server/core/manifest.h", "proto/base/status.h"). The repository root on a
# target's include path would let it include anything, so only the tests get
# it. Every other target gets a root of its own,
#
#   ${CMAKE_BINARY_DIR}/include-roots/<target>/
#
# holding symlinks to just the source directories the target owns, under
# their repository paths:
#
#   include-roots/ckptd_core/server/core -> <source>/server/core
#
# A PUBLIC root propagates through target_link_libraries, so a layer sees its
# own directory and those of the layers it links (core links storage, so it
# sees server/storage) and nothing else: including a header of a layer above,
# or a private directory, fails with "No such file or directory".
# tests/rules/ proves it for the real targets' flags.
#
# A directory is linked whole, so a new header in it is visible at once.
# When a subdirectory belongs to another target (EXCLUDE, e.g.
# server/storage/testing), the directory is mirrored entry by entry instead;
# the glob is re-checked at build time, so a new file there triggers a
# re-configure that links it.

# ckptd_include_root(<target> <PUBLIC|PRIVATE|INTERFACE>
#                    DIRS <repo-relative dir>... [EXCLUDE <subdir>...])
function(ckptd_include_root target scope)
  cmake_parse_arguments(PARSE_ARGV 2 arg "" "" "DIRS;EXCLUDE")
  if(NOT arg_DIRS OR arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "ckptd_include_root(${target}): want DIRS <dir>... "
                        "[EXCLUDE <subdir>...]")
  endif()
  foreach(excluded IN LISTS arg_EXCLUDE)
    cmake_path(GET excluded PARENT_PATH parent)
    if(NOT parent IN_LIST arg_DIRS)
      message(FATAL_ERROR "ckptd_include_root(${target}): EXCLUDE ${excluded} "
                          "is not a directory right under one of DIRS")
    endif()
  endforeach()
  set(root ${CMAKE_BINARY_DIR}/include-roots/${target})
  # Removes the links only, never what they point at.
  file(REMOVE_RECURSE ${root})
  foreach(dir IN LISTS arg_DIRS)
    set(source ${PROJECT_SOURCE_DIR}/${dir})
    if(NOT IS_DIRECTORY ${source})
      message(FATAL_ERROR "ckptd_include_root(${target}): no directory ${source}")
    endif()
    set(mirror FALSE)
    foreach(excluded IN LISTS arg_EXCLUDE)
      cmake_path(GET excluded PARENT_PATH parent)
      if(parent STREQUAL dir)
        set(mirror TRUE)
      endif()
    endforeach()
    if(NOT mirror)
      cmake_path(GET dir PARENT_PATH parent)
      file(MAKE_DIRECTORY ${root}/${parent})
      file(CREATE_LINK ${source} ${root}/${dir} SYMBOLIC)
      continue()
    endif()
    file(MAKE_DIRECTORY ${root}/${dir})
    file(GLOB entries CONFIGURE_DEPENDS LIST_DIRECTORIES true
         RELATIVE ${source} ${source}/*)
    foreach(entry IN LISTS entries)
      if(NOT "${dir}/${entry}" IN_LIST arg_EXCLUDE)
        file(CREATE_LINK ${source}/${entry} ${root}/${dir}/${entry} SYMBOLIC)
      endif()
    endforeach()
  endforeach()
  target_include_directories(${target} ${scope} $<BUILD_INTERFACE:${root}>)
endfunction()
