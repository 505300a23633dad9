/* alutwin plant engine driver: loop the step function over T steps of each of B trajectories (arrays C-ordered).

   plant/engine.py appends this file to the C that CasADi generates for the step function, after defining
   ALU_STEP (the step function's name), its work sizes ALU_SZ_ARG, ALU_SZ_RES, ALU_SZ_IW and ALU_SZ_W, and
   ALU_NX, ALU_NU and ALU_NEXO (states, inputs and exogenous signals per step). */

CASADI_SYMBOL_EXPORT int alutwin_simulate(long long n_traj, long long n_steps, const casadi_real* x0,
                                          const casadi_real* current, const casadi_real* acd,
                                          const casadi_real* alumina_extra, const casadi_real* alf3_extra,
                                          casadi_real* xs, casadi_real* us, long long* fault_step,
                                          signed char* fault_code) {
  const casadi_real* arg[ALU_SZ_ARG + 1];
  casadi_real* res[ALU_SZ_RES + 1];
  casadi_int iw[ALU_SZ_IW + 1];
  casadi_real w[ALU_SZ_W + 1];
  casadi_real e[ALU_NEXO], u_none[ALU_NU], f_in, f_out;
  long long b, k, i, j;
  for (i = 0; i < ALU_NU; ++i) u_none[i] = 0;
  for (b = 0; b < n_traj; ++b) {
    casadi_real* x = xs + b * (n_steps + 1) * ALU_NX; /* (T + 1, NX) */
    casadi_real* u = us + b * n_steps * ALU_NU;       /* (T, NU) */
    for (i = 0; i < ALU_NX; ++i) x[i] = x0[b * ALU_NX + i];
    fault_step[b] = -1;
    fault_code[b] = 0;
    f_in = 0;
    for (k = 0; k < n_steps; ++k) {
      j = b * n_steps + k;
      e[0] = current[j];
      e[1] = acd[j];
      e[2] = alumina_extra[j];
      e[3] = alf3_extra[j];
      arg[0] = x + k * ALU_NX;
      arg[1] = &f_in;
      arg[2] = k ? u + (k - 1) * ALU_NU : u_none;
      arg[3] = e;
      res[0] = x + (k + 1) * ALU_NX;
      res[1] = &f_out;
      res[2] = u + k * ALU_NU;
      if (ALU_STEP(arg, res, iw, w, 0)) return 1;
      if (f_out != 0 && f_in == 0) {
        fault_step[b] = k;
        fault_code[b] = (signed char)f_out;
      }
      f_in = f_out;
    }
  }
  return 0;
}
