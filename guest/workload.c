/*
 * The test guest's init (PID 1 of its initramfs): prints a heartbeat with a rising counter on the serial console
 * every second and dirties a working set of memory at the rate the VM's definition asks for. The rate and the set's
 * size come from SMBIOS OEM strings (type 11, libvirt's <sysinfo type='smbios'><oemStrings>), read from the raw
 * table the kernel exports in /sys/firmware/dmi/tables/DMI: built into Debian's kernel, so no module is needed.
 *
 *   novacron.dirty-mibps=N       MiB of distinct 4 KiB pages written per second; 0 (the default) leaves memory idle
 *   novacron.working-set-mib=N   size of the memory the writes cycle through (default 64)
 *
 * Each write changes a page's contents (it stores a rising generation number), so QEMU's page-sampling dirty-rate
 * measurement, which compares page hashes, sees it as well as migration's dirty bitmap does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PAGE_SIZE 4096UL
#define MIB (1024UL * 1024UL)
#define TICK_NS 10000000L /* 10 ms: the rate is spread over the second, not written in one burst */
#define DEFAULT_WORKING_SET_MIB 64UL
#define MAX_DIRTY_MIBPS 100000UL
#define MAX_WORKING_SET_MIB 65536UL
#define DMI_TABLE "/sys/firmware/dmi/tables/DMI"
#define SMBIOS_OEM_STRINGS 11
#define SMBIOS_END_OF_TABLE 127

static int console = -1;

static void say(const char *fmt, ...) {
  char line[256];
  va_list args;
  va_start(args, fmt);
  int n = vsnprintf(line, sizeof line - 1, fmt, args);
  va_end(args);
  if (n < 0) return;
  if ((size_t)n > sizeof line - 2) n = sizeof line - 2;
  line[n++] = '\n';
  if (console >= 0 && write(console, line, (size_t)n) < 0) {
    /* Nothing else can report a console that fails. */
  }
}

/* PID 1 must not exit (the kernel panics), so a fatal error is reported and then the guest idles for good. */
_Noreturn static void halt(const char *why) {
  say("novacron-testguest: error: %s", why);
  for (;;) pause();
}

static double uptime_seconds(void) {
  char text[64] = {0};
  int fd = open("/proc/uptime", O_RDONLY);
  if (fd < 0) return -1;
  ssize_t n = read(fd, text, sizeof text - 1);
  close(fd);
  return n > 0 ? strtod(text, NULL) : -1;
}

static int parse_knob(const char *entry, const char *name, unsigned long max, unsigned long *out) {
  size_t len = strlen(name);
  if (strncmp(entry, name, len) != 0 || entry[len] != '=') return 0;
  const char *digits = entry + len + 1;
  char *end = NULL;
  errno = 0;
  unsigned long value = strtoul(digits, &end, 10);
  if (*digits < '0' || *digits > '9' || *end != '\0' || errno != 0 || value > max) {
    say("novacron-testguest: error: %s must be an integer in [0, %lu], got \"%s\"", name, max, digits);
    halt("bad OEM string");
  }
  *out = value;
  return 1;
}

/* Walks the SMBIOS structure table for type 11 and applies each novacron.* string it holds. */
static void read_knobs(unsigned long *dirty_mibps, unsigned long *working_set_mib) {
  static unsigned char table[65536];
  int fd = open(DMI_TABLE, O_RDONLY);
  if (fd < 0) {
    say("novacron-testguest: no %s (%s): defaults apply", DMI_TABLE, strerror(errno));
    return;
  }
  size_t size = 0;
  ssize_t n;
  while (size < sizeof table && (n = read(fd, table + size, sizeof table - size)) > 0) size += (size_t)n;
  close(fd);
  size_t at = 0;
  while (at + 4 <= size) {
    unsigned char type = table[at], length = table[at + 1];
    if (length < 4 || at + length > size) break;
    size_t strings = at + length, end = strings;
    /* The string set ends with two NULs (just two when the structure has no strings). */
    while (end + 1 < size && !(table[end] == 0 && table[end + 1] == 0)) end++;
    if (end + 1 >= size) break;
    if (type == SMBIOS_OEM_STRINGS) {
      for (size_t s = strings; s < end + 1 && table[s] != 0; s += strlen((char *)table + s) + 1) {
        const char *entry = (const char *)table + s;
        if (!parse_knob(entry, "novacron.dirty-mibps", MAX_DIRTY_MIBPS, dirty_mibps))
          parse_knob(entry, "novacron.working-set-mib", MAX_WORKING_SET_MIB, working_set_mib);
      }
    }
    if (type == SMBIOS_END_OF_TABLE) break;
    at = end + 2;
  }
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(void) {
  mkdir("/dev", 0755);
  mkdir("/proc", 0555);
  mkdir("/sys", 0555);
  mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
  mount("proc", "/proc", "proc", 0, NULL);
  mount("sysfs", "/sys", "sysfs", 0, NULL);
  console = open("/dev/ttyS0", O_WRONLY | O_NOCTTY);
  if (console < 0) console = open("/dev/console", O_WRONLY | O_NOCTTY);

  unsigned long dirty_mibps = 0, working_set_mib = DEFAULT_WORKING_SET_MIB;
  read_knobs(&dirty_mibps, &working_set_mib);
  if (working_set_mib == 0) halt("novacron.working-set-mib must be at least 1");
  size_t pages = working_set_mib * MIB / PAGE_SIZE;
  /* Untouched anonymous memory stays unallocated, so an idle guest costs nothing for its working set. */
  volatile uint64_t *set = mmap(NULL, pages * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (set == MAP_FAILED) halt("cannot map the working set");
  say("novacron-testguest: workload started at %.2f s uptime: dirty-mibps=%lu working-set-mib=%lu", uptime_seconds(),
      dirty_mibps, working_set_mib);

  const double pages_per_ns = (double)dirty_mibps * (double)(MIB / PAGE_SIZE) / 1e9;
  const int64_t start = now_ns();
  uint64_t written = 0, generation = 1, heartbeat = 0;
  size_t next_page = 0;
  struct timespec tick = {0, TICK_NS};
  for (;;) {
    int64_t elapsed = now_ns() - start;
    /* Catching up on a late tick keeps the long-run rate right even when the emulated CPU lags. */
    uint64_t due = (uint64_t)((double)elapsed * pages_per_ns);
    for (; written < due; written++) {
      set[next_page * (PAGE_SIZE / sizeof *set)] = generation;
      if (++next_page == pages) {
        next_page = 0;
        generation++;
      }
    }
    if (elapsed >= (int64_t)heartbeat * 1000000000LL) {
      say("novacron-testguest heartbeat %llu", (unsigned long long)heartbeat);
      heartbeat++;
    }
    nanosleep(&tick, NULL);
  }
}
