// Test helper: how much of a file is in the page cache (mincore(2) on a
// read-only shared mapping, which reports page cache residency without
// bringing anything in).
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <string>
#include <vector>

namespace portcullis::testing_support {

// Fraction (0..1) of the pages of `path` overlapping [from, to) that are
// cached; -1 if the file cannot be mapped or the range is empty.
inline double residentFraction(const std::string& path, off_t from, off_t to) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  struct stat st;
  if (::fstat(fd, &st) != 0 || st.st_size == 0) {
    ::close(fd);
    return -1;
  }
  void* map = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return -1;
  const long page = ::sysconf(_SC_PAGESIZE);
  const size_t pages = (static_cast<size_t>(st.st_size) + page - 1) / page;
  std::vector<unsigned char> vec(pages);
  const bool ok = ::mincore(map, static_cast<size_t>(st.st_size), vec.data()) == 0;
  ::munmap(map, static_cast<size_t>(st.st_size));
  if (!ok) return -1;
  if (to > st.st_size) to = st.st_size;
  const size_t first = static_cast<size_t>(from / page);
  const size_t last = static_cast<size_t>((to + page - 1) / page);
  if (last <= first) return -1;
  size_t in = 0;
  for (size_t i = first; i < last; ++i) in += vec[i] & 1;
  return static_cast<double>(in) / static_cast<double>(last - first);
}

// True when `dir` is on tmpfs, whose pages are the data and cannot be dropped.
inline bool onTmpfs(const std::string& dir) {
  struct statfs fs;
  return ::statfs(dir.c_str(), &fs) == 0 && fs.f_type == 0x01021994;  // TMPFS_MAGIC
}

}  // namespace portcullis::testing_support
