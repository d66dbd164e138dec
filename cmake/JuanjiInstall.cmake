# Installs headers, the library and a relocatable CMake package: find_package(juanji) -> juanji::juanji.
include(CMakePackageConfigHelpers)

install(TARGETS juanji EXPORT juanjiTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY cpp/include/juanji DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES ${PROJECT_BINARY_DIR}/generated/juanji/build_config.hpp
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/juanji)

set(JUANJI_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/juanji)
install(EXPORT juanjiTargets NAMESPACE juanji:: DESTINATION ${JUANJI_CMAKE_DIR})
configure_package_config_file(cmake/juanjiConfig.cmake.in
  ${PROJECT_BINARY_DIR}/juanjiConfig.cmake INSTALL_DESTINATION ${JUANJI_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/juanjiConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/juanjiConfig.cmake ${PROJECT_BINARY_DIR}/juanjiConfigVersion.cmake
  DESTINATION ${JUANJI_CMAKE_DIR})
