import numpy as np, time, os
n=2048
a=np.random.rand(n,n).astype(np.float32); b=np.random.rand(n,n).astype(np.float32)
rates=[]
for r in range(10):
    t=time.perf_counter(); a@b; dt=time.perf_counter()-t
    rates.append(2*n**3/dt/1e9)
rates.sort()
print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE','(auto)')} threads={os.environ.get('OPENBLAS_NUM_THREADS')} sgemm {n}^3: best {rates[-1]:.1f} median {rates[len(rates)//2]:.1f} GFLOP/s")
