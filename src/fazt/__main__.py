from fazt.cli import main

raise SystemExit(main())
