# Resolves the build options into targets and variables used by cpp/ and python/.

find_package(Threads REQUIRED)
if(JUANJI_OPENMP)
  find_package(OpenMP REQUIRED COMPONENTS CXX)
endif()

set(JUANJI_WITH_CUDA OFF)
if(JUANJI_CUDA STREQUAL "ON" OR JUANJI_CUDA STREQUAL "AUTO")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      # No GPU is needed to build: name the architectures instead of probing ("native").
      set(CMAKE_CUDA_ARCHITECTURES 80 90)
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(JUANJI_WITH_CUDA ON)
  elseif(JUANJI_CUDA STREQUAL "ON")
    message(FATAL_ERROR "JUANJI_CUDA=ON but no CUDA compiler was found")
  endif()
endif()
set(JUANJI_WITH_MPI OFF)
if(JUANJI_MPI STREQUAL "ON" OR JUANJI_MPI STREQUAL "AUTO")
  if(JUANJI_MPI STREQUAL "ON")
    find_package(MPI REQUIRED COMPONENTS CXX)
  else()
    find_package(MPI COMPONENTS CXX)
  endif()
  if(MPI_CXX_FOUND)
    set(JUANJI_WITH_MPI ON)
  endif()
endif()
if(JUANJI_WITH_MPI)
  message(STATUS "juanji: MPI: ON (${MPI_CXX_LIBRARIES}); set JUANJI_MPI=OFF to build without it")
elseif(JUANJI_MPI STREQUAL "OFF")
  message(STATUS "juanji: MPI: OFF (JUANJI_MPI=OFF)")
else()
  message(STATUS "juanji: MPI: OFF (not found; JUANJI_MPI=ON makes that an error)")
endif()

message(STATUS "juanji: OpenMP=${JUANJI_OPENMP} CUDA=${JUANJI_WITH_CUDA} sanitize='${JUANJI_SANITIZE}'")
# Said plainly: wherever nvcc exists, GPU or not, the CUDA files add minutes to the build
# (measured on 2 cores: 5 minutes for the wheel with them, 3 without). `pip install -v .` shows it.
if(JUANJI_WITH_CUDA)
  message(STATUS "juanji: CUDA backend: ON (nvcc found at ${CMAKE_CUDA_COMPILER}, architectures "
                 "${CMAKE_CUDA_ARCHITECTURES}); set JUANJI_CUDA=OFF to skip it, saves about 2 of "
                 "the build's 5 minutes on 2 cores")
elseif(JUANJI_CUDA STREQUAL "OFF")
  message(STATUS "juanji: CUDA backend: OFF (JUANJI_CUDA=OFF)")
else()
  message(STATUS "juanji: CUDA backend: OFF (no nvcc found; JUANJI_CUDA=ON makes that an error)")
endif()

set(JUANJI_X86 OFF)
if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64|i.86)$")
  set(JUANJI_X86 ON)
endif()

if(JUANJI_SANITIZE)
  add_compile_options(-fsanitize=${JUANJI_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=${JUANJI_SANITIZE})
endif()

if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  # -Werror=undef: a file that tests JUANJI_WITH_CUDA without including the build configuration
  # would otherwise compile its CUDA path away in silence.
  set(JUANJI_WARNINGS -Wall -Wextra -Wno-unknown-pragmas -Werror=undef)
endif()
