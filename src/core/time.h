/*
 * Clocks. Monotonic nanoseconds for durations and deadlines; wall-clock
 * nanoseconds only for timestamps shown to people.
 */
#pragma once

#include <stdint.h>

uint64_t lmd_time_mono_ns(void); /* ns, CLOCK_MONOTONIC */
uint64_t lmd_time_wall_ns(void); /* ns since the Unix epoch */
