/* SPDX-License-Identifier: MIT */
/*
 * plan.c — creating, inspecting and destroying plans. All validation of the
 * configuration happens here, once, so execution can trust the plan.
 */
#include <stdlib.h>

#include "configuration.h"
#include "plan.h"

nsa_status nsa_plan_create(nsa_context *ctx, const nsa_config *cfg, nsa_plan **plan)
{
    if (plan != NULL)
        *plan = NULL;
    if (ctx == NULL)
        return NSA_ERROR_NULL_POINTER;
    if (cfg == NULL || plan == NULL)
        return nsa_fail(ctx, NSA_ERROR_NULL_POINTER, "nsa_plan_create: %s is NULL",
                        cfg == NULL ? "cfg" : "plan");
    nsa_status status = nsa_config_check(ctx, cfg);
    if (status != NSA_SUCCESS)
        return status;

    nsa_plan *p = calloc(1, sizeof *p);
    if (p == NULL)
        return nsa_fail(ctx, NSA_ERROR_OUT_OF_MEMORY, "nsa_plan_create: out of memory");
    p->ctx = ctx;
    p->cfg = *cfg;
    p->group_size = cfg->num_q_heads / cfg->num_kv_heads;
    nsa_dispatch_ukernels(ctx, &p->kernels, p->description, sizeof p->description);
    *plan = p;
    return NSA_SUCCESS;
}

void nsa_plan_destroy(nsa_plan *plan)
{
    free(plan);
}

nsa_status nsa_plan_get_config(const nsa_plan *plan, nsa_config *cfg)
{
    if (plan == NULL)
        return NSA_ERROR_NULL_POINTER;
    if (cfg == NULL)
        return nsa_fail(plan->ctx, NSA_ERROR_NULL_POINTER, "nsa_plan_get_config: cfg is NULL");
    *cfg = plan->cfg;
    return NSA_SUCCESS;
}

const char *nsa_plan_describe(const nsa_plan *plan)
{
    return plan == NULL ? "no plan" : plan->description;
}
