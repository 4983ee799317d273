const STATS = "$admin:stats";
