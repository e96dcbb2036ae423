from hf_cllm.cli import main


raise SystemExit(main())
