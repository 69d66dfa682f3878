/* SPDX-License-Identifier: MIT */
/*
 * configuration.h — validation of an nsa_config, shared by plan creation and
 * anything else that takes a configuration.
 */
#ifndef NSA_CONFIGURATION_H
#define NSA_CONFIGURATION_H

#include "context.h"

/* NSA_SUCCESS if cfg describes a computable NSA, else the status and a
 * message naming the first field at fault. */
nsa_status nsa_config_check(nsa_context *ctx, const nsa_config *cfg);

#endif /* NSA_CONFIGURATION_H */
