# Installs headers, the library and a relocatable CMake package: find_package(juanji) -> juanji::juanji.
# Everything here is the `development` component (the extension module is `python`), so a build
# may leave it out: scikit-build-core's install.components = ["python"].
include(CMakePackageConfigHelpers)

install(TARGETS juanji EXPORT juanjiTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT development
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT development
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT development)
install(DIRECTORY cpp/include/juanji DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT development)
install(FILES ${PROJECT_BINARY_DIR}/generated/juanji/build_config.hpp
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/juanji COMPONENT development)

# Relative destinations only: the targets file finds its prefix from its own location, so the
# tree may move (a wheel's juanji/ folder lands wherever site-packages is).
set(JUANJI_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/juanji)
install(EXPORT juanjiTargets NAMESPACE juanji:: DESTINATION ${JUANJI_CMAKE_DIR} COMPONENT development)
configure_package_config_file(cmake/juanjiConfig.cmake.in
  ${PROJECT_BINARY_DIR}/juanjiConfig.cmake INSTALL_DESTINATION ${JUANJI_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/juanjiConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/juanjiConfig.cmake ${PROJECT_BINARY_DIR}/juanjiConfigVersion.cmake
  DESTINATION ${JUANJI_CMAKE_DIR} COMPONENT development)
